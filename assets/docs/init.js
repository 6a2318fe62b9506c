// Starts Swagger UI on /openapi.json. A separate file rather than an inline
// script, so the page's Content-Security-Policy can forbid inline scripts.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // Keep the token across reloads while trying the admin routes.
    persistAuthorization: true,
    // The default sends the document to validator.swagger.io: nothing may
    // leave the machine, and the page must work offline.
    validatorUrl: null,
  });
});
