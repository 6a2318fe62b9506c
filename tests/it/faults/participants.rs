//! Both participants, mocked with wiremock, recording every call: whose
//! saga it was for, under which idempotency key, and when it was in
//! flight. Alliances sits behind a forwarder that an outage cuts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::cut::Cut;

/// One call as a participant saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub partner: String,
    pub key: String,
    pub from: Instant,
    pub until: Instant,
    /// When it arrived, by the clock the service stamps its sagas with.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Calls per step, in arrival order.
#[derive(Default)]
struct Calls {
    create_alliance: Vec<Call>,
    delete_partner: Vec<Call>,
}

/// Whether alliances refuses `partner` (a business rejection, compensated):
/// one in ten, decided by the id alone so every attempt answers the same.
pub fn refused(partner: &str) -> bool {
    partner.bytes().map(u32::from).sum::<u32>() % 10 == 0
}

#[derive(Clone, Copy)]
enum Step {
    CreateAlliance,
    DeletePartner,
}

/// Answers as the real participant would, after `delay`, and records.
struct Recorder {
    step: Step,
    delay: Duration,
    calls: Arc<Mutex<Calls>>,
}

impl Respond for Recorder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (partner, answer) = match self.step {
            Step::CreateAlliance => {
                let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
                let partner = body["partner_id"].as_str().unwrap_or_default().to_string();
                let answer = if refused(&partner) {
                    ResponseTemplate::new(422).set_body_json(json!({"error": "tier not offered"}))
                } else {
                    ResponseTemplate::new(201)
                        .set_body_json(json!({"alliance_id": format!("a-{partner}")}))
                };
                (partner, answer)
            }
            Step::DeletePartner => {
                let partner = request.url.path().rsplit('/').next().unwrap_or_default();
                (partner.to_string(), ResponseTemplate::new(204))
            }
        };
        let now = Instant::now();
        let call = Call {
            partner,
            key,
            from: now,
            until: now + self.delay,
            at: chrono::Utc::now(),
        };
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        match self.step {
            Step::CreateAlliance => calls.create_alliance.push(call),
            Step::DeletePartner => calls.delete_partner.push(call),
        }
        answer.set_delay(self.delay)
    }
}

/// Alliances and integrations for one scenario.
pub struct Participants {
    _alliances: MockServer,
    _integrations: MockServer,
    alliances_link: Cut,
    integrations_uri: String,
    calls: Arc<Mutex<Calls>>,
}

impl Participants {
    /// Each call answered after `delay`: long enough that two drivers of
    /// one saga at once would show as overlapping calls.
    pub async fn start(delay: Duration) -> Self {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let alliances = MockServer::start().await;
        let recorder = |step| Recorder {
            step,
            delay,
            calls: calls.clone(),
        };
        Mock::given(method("POST"))
            .and(path("/alliances"))
            .respond_with(recorder(Step::CreateAlliance))
            .mount(&alliances)
            .await;
        let integrations = MockServer::start().await;
        Mock::given(method("DELETE"))
            .and(path_regex("^/partners/[^/]+$"))
            .respond_with(recorder(Step::DeletePartner))
            .mount(&integrations)
            .await;
        let alliances_link = Cut::to(alliances.address().to_string()).await;
        Self {
            integrations_uri: integrations.uri(),
            _alliances: alliances,
            _integrations: integrations,
            alliances_link,
            calls,
        }
    }

    /// The settings that point a service at them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "ALIANZAS_API_URL",
                format!("http://127.0.0.1:{}", self.alliances_link.port),
            ),
            ("INTEGRACIONES_API_URL", self.integrations_uri.clone()),
        ]
    }

    /// Alliances goes away: its connections cut, every new one closed at
    /// once (and counted).
    pub async fn take_alliances_down(&mut self) {
        self.alliances_link.turn_away().await;
    }

    /// Connections alliances turned away while down: the attempts made.
    pub fn alliance_attempts_while_down(&self) -> usize {
        self.alliances_link.turned_away()
    }

    pub async fn bring_alliances_back(&mut self) {
        self.alliances_link.restore().await;
    }

    /// What the calls show about one scenario's run.
    pub fn tally(&self) -> Tally {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let steps = [&calls.create_alliance, &calls.delete_partner];
        Tally {
            calls: steps.iter().map(|c| c.len()).sum(),
            partners_created: distinct_partners(&calls.create_alliance, |p| !refused(p)),
            partners_deleted: distinct_partners(&calls.delete_partner, |_| true),
            keys: [
                ("create-alliance", &calls.create_alliance),
                ("delete-partner", &calls.delete_partner),
            ]
            .into_iter()
            .flat_map(|(step, calls)| keys_of(step, calls))
            .collect(),
            overlapping: steps.iter().map(|c| overlapping(c)).sum(),
            last_call: last_calls(steps.iter().flat_map(|c| c.iter())),
        }
    }
}

/// The participants' side of a verdict.
#[derive(Debug, Default)]
pub struct Tally {
    pub calls: usize,
    /// Partners alliances created an alliance for.
    pub partners_created: HashSet<String>,
    /// Partners integrations was asked to delete.
    pub partners_deleted: HashSet<String>,
    /// The idempotency keys each saga step (partner, step as the key
    /// names it) was called under; an empty key: the header was missing.
    pub keys: HashMap<(String, &'static str), HashSet<String>>,
    /// Saga steps with two calls in flight at once: two drivers.
    pub overlapping: usize,
    /// Each partner's latest call.
    pub last_call: HashMap<String, chrono::DateTime<chrono::Utc>>,
}

fn last_calls<'a>(
    calls: impl Iterator<Item = &'a Call>,
) -> HashMap<String, chrono::DateTime<chrono::Utc>> {
    let mut last: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for call in calls {
        let at = last.entry(call.partner.clone()).or_insert(call.at);
        *at = (*at).max(call.at);
    }
    last
}

fn distinct_partners(calls: &[Call], counts: impl Fn(&str) -> bool) -> HashSet<String> {
    calls
        .iter()
        .filter(|c| counts(&c.partner))
        .map(|c| c.partner.clone())
        .collect()
}

fn by_partner(calls: &[Call]) -> HashMap<&str, Vec<&Call>> {
    let mut by: HashMap<&str, Vec<&Call>> = HashMap::new();
    for call in calls {
        by.entry(call.partner.as_str()).or_default().push(call);
    }
    by
}

fn keys_of<'a>(
    step: &'static str,
    calls: &'a [Call],
) -> impl Iterator<Item = ((String, &'static str), HashSet<String>)> + 'a {
    by_partner(calls).into_iter().map(move |(partner, calls)| {
        let keys = calls.iter().map(|c| c.key.clone()).collect();
        ((partner.to_string(), step), keys)
    })
}

/// Partners with a call that began before an earlier one had been answered.
fn overlapping(calls: &[Call]) -> usize {
    by_partner(calls)
        .values()
        .filter(|calls| calls.windows(2).any(|w| w[1].from < w[0].until))
        .count()
}
