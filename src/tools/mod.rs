//! The operator tools, built on the service's public API and never the
//! other way round: nothing outside `tools` uses anything in it.
//!
//! - [`cli`]: the command line, one module per subcommand.
//! - [`simulator`]: both participants simulated, over HTTP and the broker.
//! - [`demo`]: the embedded demo and its report.
//! - [`load`]: `publish` and `load-test`: test events out, sagas read back, a report.
//! - [`monitor`]: a live view of every channel, read beside the orchestrator
//!   (never from its subscription): parsing, filters, grouping, output.

pub mod cli;
pub mod demo;
pub mod load;
pub mod monitor;
pub mod simulator;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every `.rs` file under `dir`, depth first.
    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let entries = std::fs::read_dir(dir).expect("src is readable");
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The layout's one rule: the service builds without its tools, so a
    /// tool can change without touching what runs in production.
    #[test]
    fn no_service_module_uses_the_tools() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let offenders: Vec<_> = files
            .iter()
            .filter(|p| !p.starts_with(src.join("tools")) && !p.ends_with("main.rs"))
            .filter(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                text.contains("crate::tools") || text.contains("tools::")
            })
            .collect();
        assert!(
            offenders.is_empty(),
            "service modules using tools: {offenders:?}"
        );
    }
}
