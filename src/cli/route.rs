//! `fluxrouter route`: explain one flux-auto decision, score a labelled file, or train the
//! classifier.

use std::path::{Path, PathBuf};

use fluxrouter::config::ServerConfig;

use super::CliResult;

/// The lanes file to route with: `--lanes`, or the one the server configuration names.
fn lanes_path(
    config_path: &Path,
    lanes: Option<PathBuf>,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    match lanes {
        Some(p) => Ok(p),
        None => Ok(ServerConfig::load(config_path)?.lanes_file),
    }
}

pub fn route(
    config_path: &Path,
    explain: Option<PathBuf>,
    eval: Option<PathBuf>,
    train: Option<PathBuf>,
    out: Option<PathBuf>,
    lanes: Option<PathBuf>,
) -> CliResult {
    use fluxrouter::routing::classifier::{cli, train as trainer};
    use fluxrouter::routing::RouteTable;
    let read = |p: &Path| -> std::io::Result<Vec<u8>> {
        if p == Path::new("-") {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
            Ok(b)
        } else {
            std::fs::read(p)
        }
    };
    if let Some(dir) = train {
        let options = trainer::Options::default();
        let (examples, sha) = trainer::load_corpus(&dir, options.buckets)?;
        let outcome = trainer::train(&examples, &sha, &options);
        print!("{}", outcome.report);
        let out = match out {
            Some(p) => p,
            None => {
                let lanes = lanes_path(config_path, lanes)?;
                let file: fluxrouter::config::LanesFile = fluxrouter::config::read_yaml(&lanes)?;
                let weights = file
                    .auto
                    .classifier
                    .ok_or("lanes.yaml names no auto.classifier.weights; pass --out")?
                    .weights;
                lanes.parent().unwrap_or(Path::new("")).join(weights)
            }
        };
        if outcome.held_out.under_routed() > 0 {
            return Err(format!(
                "not written: {} held-out requests under-routed (see above); {} unchanged",
                outcome.held_out.under_routed(),
                out.display()
            )
            .into());
        }
        std::fs::write(&out, outcome.classifier.to_file())?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    let lanes = lanes_path(config_path, lanes)?;
    let routes = RouteTable::load(&lanes, &|_| true)?;
    if let Some(file) = explain {
        print!("{}", cli::explain(&routes, &read(&file)?)?);
        return Ok(());
    }
    if let Some(file) = eval {
        let text = String::from_utf8(read(&file)?)?;
        let (tally, problems) = cli::evaluate(&routes, &text);
        for p in &problems {
            eprintln!("skipped {p}");
        }
        print!("{}", tally.report());
        if !problems.is_empty() {
            return Err(format!("{} lines could not be scored", problems.len()).into());
        }
        return Ok(());
    }
    Err("route needs --explain FILE, --eval FILE.jsonl or --train DIR".into())
}
