//! Training the lane classifier from the corpus in `training/`, deterministically: the same
//! corpus always gives the same weights file, byte for byte.
//!
//! - The corpus: `training/requests/*.jsonl`, one labelled OpenAI chat request per line
//!   (`{"id", "lane", "topic", "lang", "request"}`), `<<doc:NAME>>` in a message replaced by
//!   `training/docs/NAME.txt` (long documents written once, asked about many ways).
//! - The model: multinomial logistic regression, AdaGrad SGD in a seeded order, L2, deep
//!   requests weighted up (under-routing costs more than over-routing).
//! - The report: k-fold cross-validation and a held-out split, both by topic (a topic is
//!   never on both sides), with accuracy, under-routing, cost index and confusion matrix.
//!   Image requests are routed by the image rule, not learned; they are scored with it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::eval::{nominal_price, Tally};
use super::features::Hashed;
use super::model::{choose, softmax, Classifier, Policy, Provenance};
use crate::errors::{Context, Error, Fault};
use crate::wire::transcode::parse_request;
use crate::wire::Format;

/// One labelled request, featurized.
pub struct Example {
    pub id: String,
    pub lane: String,
    pub topic: String,
    /// Image input: routed by the image rule, never by the classifier.
    pub images: bool,
    pub features: Hashed,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub buckets: u32,
    pub epochs: usize,
    pub learning_rate: f32,
    pub l2: f32,
    /// How much more a `deep` example weighs than the others.
    pub deep_weight: f32,
    pub folds: u64,
    /// Percent of topics held out.
    pub held_out_percent: u64,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            buckets: 1 << 17,
            epochs: 40,
            learning_rate: 0.4,
            l2: 1e-6,
            deep_weight: 1.6,
            folds: 5,
            held_out_percent: 15,
            seed: 0x5eed_f1ed,
        }
    }
}

/// Read `dir/requests/*.jsonl` with `dir/docs/*.txt` expanded. Returns the examples and the
/// SHA-256 of the expanded corpus.
pub fn load_corpus(dir: &Path, buckets: u32) -> Result<(Vec<Example>, String), Error> {
    let requests = dir.join("requests");
    let mut files: Vec<_> = std::fs::read_dir(&requests)
        .with_context(Fault::Io, || requests.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut digest = Sha256::new();
    let mut examples = Vec::new();
    let mut ids = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(Fault::Io, || file.display().to_string())?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", file.display(), n + 1);
            let line = expand_docs(line, &dir.join("docs")).with_context(Fault::Invalid, at)?;
            digest.update(line.as_bytes());
            digest.update(b"\n");
            let v: serde_json::Value =
                serde_json::from_str(&line).with_context(Fault::Invalid, at)?;
            let field = |k: &str| v[k].as_str().map(str::to_string);
            let (Some(id), Some(lane), Some(topic)) = (field("id"), field("lane"), field("topic"))
            else {
                return Err(Error::new(
                    Fault::Invalid,
                    format!("{}: needs id, lane and topic", at()),
                ));
            };
            if !ids.insert(id.clone()) {
                return Err(Error::new(
                    Fault::Invalid,
                    format!("{}: id {id} used twice", at()),
                ));
            }
            let raw = serde_json::to_vec(&v["request"]).expect("a JSON value");
            let req = parse_request(Format::OpenAiChat, &raw)
                .map_err(|e| Error::new(Fault::Invalid, format!("{}: {}", at(), e.message)))?;
            let images = crate::routing::features(&req).images;
            examples.push(Example {
                id,
                lane,
                topic,
                images,
                features: Hashed::of(&req, buckets),
            });
        }
    }
    if examples.is_empty() {
        return Err(Error::new(
            Fault::Invalid,
            format!("no requests in {}", requests.display()),
        ));
    }
    Ok((examples, hex::encode(digest.finalize())))
}

/// `<<doc:NAME>>` replaced by the JSON-escaped text of `docs/NAME.txt`.
fn expand_docs(line: &str, docs: &Path) -> Result<String, Error> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find("<<doc:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let end = after
            .find(">>")
            .ok_or_else(|| Error::new(Fault::Invalid, "an unclosed <<doc:"))?;
        let name = &after[..end];
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(Error::new(Fault::Invalid, format!("bad doc name {name:?}")));
        }
        let text = std::fs::read_to_string(docs.join(format!("{name}.txt")))
            .with_context(Fault::Invalid, || format!("doc {name}"))?;
        let quoted = serde_json::to_string(&text).expect("a string");
        out.push_str(&quoted[1..quoted.len() - 1]);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// splitmix64: a fixed generator, so the order (and the weights) never depend on a crate's
/// version.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The lanes the classifier learns: every label but `image`, by nominal price.
pub fn learned_lanes(examples: &[Example]) -> Vec<String> {
    let mut lanes: Vec<String> = examples
        .iter()
        .map(|e| e.lane.clone())
        .filter(|l| l != "image")
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    lanes.sort_by(|a, b| nominal_price(a).total_cmp(&nominal_price(b)).then(a.cmp(b)));
    lanes
}

/// Fit weights (`[feature][lane]`) and biases on `train`.
fn fit(train: &[&Example], lanes: &[String], o: &Options) -> (Vec<f32>, Vec<f32>) {
    let n = lanes.len();
    let buckets = o.buckets as usize;
    let mut w = vec![0f32; buckets * n];
    let mut g2 = vec![0f32; buckets * n];
    let mut bias = vec![0f32; n];
    let mut bias_g2 = vec![0f32; n];
    let counts: Vec<usize> = lanes
        .iter()
        .map(|l| train.iter().filter(|e| &e.lane == l).count())
        .collect();
    // Balanced classes, then deep up-weighted.
    let class_weight: Vec<f32> = lanes
        .iter()
        .zip(&counts)
        .map(|(l, &c)| {
            let balance = train.len() as f32 / (n as f32 * c.max(1) as f32);
            balance * if l == "deep" { o.deep_weight } else { 1.0 }
        })
        .collect();
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = o.seed;
    let mut z = vec![0f32; n];
    for _ in 0..o.epochs {
        for i in (1..order.len()).rev() {
            let j = (splitmix(&mut rng) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for &k in &order {
            let e = train[k];
            let Some(y) = lanes.iter().position(|l| *l == e.lane) else {
                continue;
            };
            let x = &e.features;
            z.copy_from_slice(&bias);
            for (&f, &v) in x.indices.iter().zip(&x.values) {
                let f = f as usize * n;
                for (zl, wl) in z.iter_mut().zip(&w[f..f + n]) {
                    *zl += wl * v;
                }
            }
            softmax(&mut z);
            let cw = class_weight[y];
            for l in 0..n {
                let err = (z[l] - if l == y { 1.0 } else { 0.0 }) * cw;
                bias_g2[l] += err * err;
                bias[l] -= o.learning_rate * err / (bias_g2[l].sqrt() + 1e-6);
                for (&f, &v) in x.indices.iter().zip(&x.values) {
                    let i = f as usize * n + l;
                    let grad = err * v + o.l2 * w[i];
                    g2[i] += grad * grad;
                    w[i] -= o.learning_rate * grad / (g2[i].sqrt() + 1e-6);
                }
            }
        }
    }
    (w, bias)
}

fn train_classifier(
    train: &[&Example],
    lanes: &[String],
    policy: Policy,
    o: &Options,
    trained: Provenance,
) -> Classifier {
    let learnable: Vec<&Example> = train.iter().copied().filter(|e| !e.images).collect();
    let (w, bias) = fit(&learnable, lanes, o);
    let p = (policy.margin, policy.guard);
    Classifier::from_floats(lanes.to_vec(), o.buckets, p, bias, &w, trained)
}

/// The lane flux-auto's default rules give: the image rule, then the classifier.
pub fn decide(c: &Classifier, e: &Example, policy: Policy) -> String {
    if e.images {
        return "image".into();
    }
    let s = c.scores(&e.features);
    let choice = choose(
        s.as_slice(),
        |l| nominal_price(&c.lanes[l]),
        |_| true,
        policy,
    )
    .expect("every lane allowed");
    c.lanes[choice.lane].clone()
}

/// Where a topic falls in the folds and the held-out split: FNV-1a of its name, fixed apart
/// from the feature hash so a change of features never moves the split.
fn topic_slot(topic: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in b"topic\xff".iter().chain(topic.as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What training produced: the weights to write (when they may be written) and the report.
pub struct Outcome {
    pub classifier: Classifier,
    pub held_out: Tally,
    pub cross_validated: Tally,
    pub report: String,
}

/// Policies tried: margins, and guards from off (1.0) down.
const MARGINS: [f32; 5] = [0.0, 0.05, 0.1, 0.15, 0.2];
const GUARDS: [f32; 8] = [1.0, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1];

/// Cross-validate, pick the policy, score the held-out split, and train the final weights
/// on everything.
pub fn train(examples: &[Example], corpus_sha256: &str, o: &Options) -> Outcome {
    let lanes = learned_lanes(examples);
    let mut report = String::new();
    let topics: BTreeSet<&str> = examples.iter().map(|e| e.topic.as_str()).collect();
    let held = |e: &Example| topic_slot(&e.topic) % 100 < o.held_out_percent;
    let (held_out, rest): (Vec<&Example>, Vec<&Example>) = examples.iter().partition(|e| held(e));
    let _ = writeln!(
        report,
        "corpus: {} requests, {} topics, sha256 {corpus_sha256}\nlanes learned: {}; image by rule\nheld out by topic: {} requests in {} topics; cross-validated ({} folds by topic) on the other {}",
        examples.len(),
        topics.len(),
        lanes.join(", "),
        held_out.len(),
        held_out
            .iter()
            .map(|e| e.topic.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        o.folds,
        rest.len(),
    );
    for (lane, n) in count_by(examples.iter().map(|e| e.lane.as_str())) {
        let _ = write!(report, "{lane} {n}  ");
    }
    report.push('\n');

    let policies: Vec<Policy> = MARGINS
        .iter()
        .flat_map(|&margin| GUARDS.iter().map(move |&guard| Policy { margin, guard }))
        .collect();
    // Out-of-fold decisions under every policy.
    let mut cv: Vec<Tally> = vec![Tally::default(); policies.len()];
    let mut cv_under: Vec<Vec<String>> = vec![Vec::new(); policies.len()];
    // Per topic at the first policy: (right, total), to show where the corpus is thin.
    let mut by_topic: std::collections::BTreeMap<&str, (u32, u32)> = Default::default();
    for fold in 0..o.folds {
        let in_fold = |e: &Example| (topic_slot(&e.topic) / 100) % o.folds == fold;
        let train_set: Vec<&Example> = rest.iter().copied().filter(|e| !in_fold(e)).collect();
        let test_set: Vec<&Example> = rest.iter().copied().filter(|e| in_fold(e)).collect();
        if test_set.is_empty() {
            continue;
        }
        let c = train_classifier(&train_set, &lanes, policies[0], o, Provenance::default());
        for e in test_set {
            for (i, p) in policies.iter().enumerate() {
                let chosen = decide(&c, e, *p);
                if i == 0 {
                    let t = by_topic.entry(e.topic.as_str()).or_default();
                    t.0 += u32::from(chosen == e.lane);
                    t.1 += 1;
                }
                if super::eval::under_routes(&e.lane, &chosen) {
                    cv_under[i].push(e.id.clone());
                }
                cv[i].add(&e.lane, &chosen);
            }
        }
    }
    // The fewest under-routed, then the most accurate, then the cheapest.
    let pick = (0..policies.len())
        .min_by(|&a, &b| {
            cv[a]
                .under_routed()
                .cmp(&cv[b].under_routed())
                .then(cv[b].correct().cmp(&cv[a].correct()))
                .then(cv[a].cost_index().total_cmp(&cv[b].cost_index()))
        })
        .unwrap_or(0);
    let policy = policies[pick];
    let mut worst: Vec<(&str, (u32, u32))> = by_topic.into_iter().collect();
    worst.sort_by(|a, b| (a.1 .0 * b.1 .1).cmp(&(b.1 .0 * a.1 .1)).then(a.0.cmp(b.0)));
    let _ = writeln!(
        report,
        "\nweakest topics in cross-validation (right/total, no policy):"
    );
    for (topic, (right, total)) in worst.iter().take(12) {
        let _ = writeln!(report, "  {topic}: {right}/{total}");
    }
    let _ = writeln!(report, "\ncross-validation by policy (margin, guard):");
    for (p, t) in policies.iter().zip(&cv) {
        let _ = writeln!(
            report,
            "  {:.2} {:.2}: accuracy {:.1}%  under-routed {}  cost index {:.3}",
            p.margin,
            p.guard,
            100.0 * t.accuracy(),
            t.under_routed(),
            t.cost_index()
        );
    }
    let _ = writeln!(
        report,
        "policy chosen: margin {:.2}, guard {:.2} (fewest under-routed, then most accurate)\n\ncross-validated under it:\n{}under-routed: {}\n",
        policy.margin,
        policy.guard,
        cv[pick].report(),
        cv_under[pick].join(" ")
    );

    let split = train_classifier(&rest, &lanes, policy, o, Provenance::default());
    let mut held_tally = Tally::default();
    for e in &held_out {
        let chosen = decide(&split, e, policy);
        if super::eval::under_routes(&e.lane, &chosen) {
            let _ = writeln!(report, "held-out under-routed: {} -> {chosen}", e.id);
        }
        held_tally.add(&e.lane, &chosen);
    }
    let _ = writeln!(report, "held-out split:\n{}", held_tally.report());

    let classifier = train_classifier(
        &examples.iter().collect::<Vec<_>>(),
        &lanes,
        policy,
        o,
        Provenance {
            examples: examples.len(),
            corpus_sha256: corpus_sha256.to_string(),
            report: format!(
                "cv accuracy {:.1}%, cv under-routed {}, cv cost index {:.3}; held-out accuracy {:.1}%, under-routed {}, cost index {:.3}",
                100.0 * cv[pick].accuracy(),
                cv[pick].under_routed(),
                cv[pick].cost_index(),
                100.0 * held_tally.accuracy(),
                held_tally.under_routed(),
                held_tally.cost_index(),
            ),
        },
    );
    Outcome {
        classifier,
        held_out: held_tally,
        cross_validated: cv[pick].clone(),
        report,
    }
}

fn count_by<'a>(items: impl Iterator<Item = &'a str>) -> Vec<(&'a str, usize)> {
    let mut m = std::collections::BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(id: usize, lane: &str, topic: &str, text: &str) -> Example {
        let body = serde_json::json!({"model": "flux-auto",
            "messages": [{"role": "user", "content": text}]});
        let raw = serde_json::to_vec(&body).unwrap();
        let req = parse_request(Format::OpenAiChat, &raw).unwrap();
        Example {
            id: id.to_string(),
            lane: lane.into(),
            topic: topic.into(),
            images: false,
            features: Hashed::of(&req, 1 << 12),
        }
    }

    fn corpus() -> Vec<Example> {
        let mut v = vec![];
        let express = [
            "hi there",
            "hello!",
            "what is the capital of peru",
            "thanks a lot",
            "translate 'good night' to french",
            "hey how are you",
            "capital of chile?",
            "say hello in german",
        ];
        let deep = [
            "prove that there are infinitely many primes",
            "prove the square root of two is irrational",
            "prove every tree with n nodes has n-1 edges",
            "prove that the harmonic series diverges",
            "prove there is no largest prime gap bound",
            "prove that a bipartite graph has no odd cycle",
            "prove the pigeonhole principle rigorously",
            "prove that e is irrational",
        ];
        let daily = [
            "write a python function that parses csv with quoted fields and tests",
            "debug this rust borrow checker error in my parser loop",
            "write a dockerfile for a node app with a multi-stage build",
            "review my go http handler for error handling mistakes",
            "write a bash script that rotates logs and compresses old ones",
            "write unit tests for a javascript date formatting function",
            "explain this sql query plan and how to add an index",
            "refactor this java class to use dependency injection",
        ];
        for (i, t) in express.iter().enumerate() {
            v.push(example(i, "express", &format!("e{}", i % 4), t));
        }
        for (i, t) in deep.iter().enumerate() {
            v.push(example(100 + i, "deep", &format!("p{}", i % 4), t));
        }
        for (i, t) in daily.iter().enumerate() {
            v.push(example(200 + i, "daily", &format!("d{}", i % 4), t));
        }
        v
    }

    #[test]
    fn training_is_deterministic_and_learns_the_lanes() {
        let o = Options {
            buckets: 1 << 12,
            epochs: 30,
            held_out_percent: 0,
            folds: 2,
            ..Options::default()
        };
        let examples = corpus();
        let a = train(&examples, "x", &o);
        let b = train(&examples, "x", &o);
        assert_eq!(
            a.classifier.to_file(),
            b.classifier.to_file(),
            "byte for byte"
        );
        // On its own training data the model is right.
        let wrong: Vec<_> = examples
            .iter()
            .filter(|e| decide(&a.classifier, e, a.classifier.policy()) != e.lane)
            .map(|e| &e.id)
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
        assert_eq!(a.classifier.lanes, ["express", "daily", "deep"]);
        assert!(a.report.contains("cross-validation"), "{}", a.report);
    }

    #[test]
    fn documents_are_expanded_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memo.txt"), "line \"one\"\nline two").unwrap();
        let line = r#"{"content": "Read <<doc:memo>> and answer"}"#;
        let out = expand_docs(line, dir.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["content"], "Read line \"one\"\nline two and answer");
        assert!(expand_docs(r#""<<doc:../x>>""#, dir.path()).is_err());
        assert!(expand_docs(r#""<<doc:missing>>""#, dir.path()).is_err());
    }
}
