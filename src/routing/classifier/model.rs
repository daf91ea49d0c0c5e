//! The classifier's weights file and its arithmetic: a multinomial logistic regression over
//! hashed binary features, each request's features scaled to unit length.
//!
//! The file is JSON: the lanes it chooses among, the hash space, the tie margin, biases, and
//! the weights as 8-bit integers with one scale (gzip, then base64, lane-interleaved per
//! bucket). In memory each bucket's lanes are padded to a power of two (3 lanes: 4 bytes,
//! one aligned load per feature; 2^17 buckets: 512 KB, where version 1's 16-bit 2^18 table
//! was 1.5 MB). It is validated whole at load; a bad file is refused like a bad lanes.yaml,
//! and a version 1 file with a message to retrain (its hashes are not today's features').

use std::io::{Read, Write};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::features::{extract, group, slot, Hashed, Sink, GROUPS};
use crate::errors::{Context, Error, Fault};
use crate::wire::ir::Request;

pub const FORMAT: &str = "fluxrouter-lane-classifier";
pub const VERSION: u32 = 2;
/// Lanes a classifier may choose among.
pub const MAX_LANES: usize = 8;

/// What the file says about how it was made (reported, not used for decisions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub examples: usize,
    pub corpus_sha256: String,
    #[serde(default)]
    pub report: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    version: u32,
    lanes: Vec<String>,
    buckets: u32,
    /// A pricier lane within this much probability of the best one wins.
    margin: f32,
    /// A lane at least this likely keeps the choice within one price step below it.
    guard: f32,
    bias: Vec<f32>,
    /// Weight = stored integer × scale.
    scale: f32,
    /// i8, `buckets × lanes`, gzip, base64.
    weights: String,
    trained: Provenance,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    pub lanes: Vec<String>,
    pub buckets: u32,
    pub margin: f32,
    pub guard: f32,
    bias: Vec<f32>,
    scale: f32,
    /// Lanes rounded up to a power of two: a bucket's weights are one aligned group of
    /// `stride` bytes, the padding lanes zero.
    stride: usize,
    /// `[bucket][stride]`.
    weights: Vec<i8>,
    pub trained: Provenance,
}

/// Probabilities per lane, in the classifier's lane order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    pub len: usize,
    pub p: [f32; MAX_LANES],
}

impl Scores {
    pub fn as_slice(&self) -> &[f32] {
        &self.p[..self.len]
    }
}

impl Classifier {
    /// A classifier from trained float weights (`[feature][lane]`), quantized to 8 bits.
    pub fn from_floats(
        lanes: Vec<String>,
        buckets: u32,
        (margin, guard): (f32, f32),
        bias: Vec<f32>,
        weights: &[f32],
        trained: Provenance,
    ) -> Self {
        let max = weights.iter().fold(0f32, |m, w| m.max(w.abs()));
        let scale = if max > 0.0 {
            max / f32::from(i8::MAX)
        } else {
            1.0
        };
        let quantized: Vec<i8> = weights
            .iter()
            .map(|w| (w / scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        let stride = lanes.len().next_power_of_two();
        Classifier {
            weights: padded(&quantized, lanes.len(), stride),
            lanes,
            buckets,
            margin,
            guard,
            bias,
            scale,
            stride,
            trained,
        }
    }

    pub fn parse(text: &[u8]) -> Result<Self, Error> {
        let f: File =
            serde_json::from_slice(text).context(Fault::Malformed, "not a classifier file")?;
        if f.format == FORMAT && f.version == 1 {
            return Err(Error::new(
                Fault::Malformed,
                "version 1 (16-bit weights over the previous features) no longer matches how \
                 requests are read: retrain with `fluxrouter route --train training`",
            ));
        }
        if f.format != FORMAT || f.version != VERSION {
            return Err(Error::new(
                Fault::Malformed,
                format!(
                    "not a {FORMAT} file of version {VERSION} (format {:?}, version {})",
                    f.format, f.version
                ),
            ));
        }
        let n = f.lanes.len();
        if !(2..=MAX_LANES).contains(&n) {
            return Err(Error::new(
                Fault::Malformed,
                format!("lanes: 2 to {MAX_LANES} lanes, not {n}"),
            ));
        }
        if !f.buckets.is_power_of_two() || !(1 << 8..=1 << 24).contains(&f.buckets) {
            return Err(Error::new(
                Fault::Malformed,
                "buckets: a power of two from 256 to 16777216",
            ));
        }
        if f.bias.len() != n || f.bias.iter().any(|b| !b.is_finite()) {
            return Err(Error::new(
                Fault::Malformed,
                "bias: one finite number per lane",
            ));
        }
        if !(0.0..=0.5).contains(&f.margin)
            || !(0.0..=1.0).contains(&f.guard)
            || !f.scale.is_finite()
            || f.scale <= 0.0
        {
            return Err(Error::new(
                Fault::Malformed,
                "margin must be within 0..0.5, guard within 0..1, scale positive",
            ));
        }
        let gz = base64::engine::general_purpose::STANDARD
            .decode(f.weights.as_bytes())
            .context(Fault::Malformed, "weights")?;
        let want = f.buckets as usize * n;
        let mut raw = Vec::with_capacity(want);
        // Bounded by the declared shape: a file cannot inflate past what it says it holds.
        flate2::read::GzDecoder::new(&gz[..])
            .take(want as u64 + 1)
            .read_to_end(&mut raw)
            .context(Fault::Malformed, "weights")?;
        if raw.len() != want {
            return Err(Error::new(
                Fault::Malformed,
                format!(
                    "weights: {} bytes where buckets × lanes = {want}",
                    raw.len()
                ),
            ));
        }
        if raw.contains(&(i8::MIN as u8)) {
            return Err(Error::new(
                Fault::Malformed,
                "weights: -128 is outside the quantized range (-127 to 127)",
            ));
        }
        let raw: Vec<i8> = raw.into_iter().map(|b| b as i8).collect();
        let stride = n.next_power_of_two();
        Ok(Classifier {
            weights: padded(&raw, n, stride),
            stride,
            lanes: f.lanes,
            buckets: f.buckets,
            margin: f.margin,
            guard: f.guard,
            bias: f.bias,
            scale: f.scale,
            trained: f.trained,
        })
    }

    /// The file's bytes: the same classifier always writes the same bytes.
    pub fn to_file(&self) -> Vec<u8> {
        let n = self.lanes.len();
        let raw: Vec<u8> = self
            .weights
            .chunks_exact(self.stride)
            .flat_map(|bucket| &bucket[..n])
            .map(|&w| w as u8)
            .collect();
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        gz.write_all(&raw).expect("writing to memory");
        let gz = gz.finish().expect("writing to memory");
        let file = File {
            format: FORMAT.into(),
            version: VERSION,
            lanes: self.lanes.clone(),
            buckets: self.buckets,
            margin: self.margin,
            guard: self.guard,
            bias: self.bias.clone(),
            scale: self.scale,
            weights: base64::engine::general_purpose::STANDARD.encode(gz),
            trained: self.trained.clone(),
        };
        let mut text = serde_json::to_vec_pretty(&file).expect("serializable");
        text.push(b'\n');
        text
    }

    /// Each lane's probability for a request's features.
    pub fn scores(&self, h: &Hashed) -> Scores {
        let n = self.lanes.len();
        let mut sums = [0f32; MAX_LANES];
        for (&i, &v) in h.indices.iter().zip(&h.values) {
            let i = (i & (self.buckets - 1)) as usize * self.stride;
            for (s, w) in sums.iter_mut().zip(&self.weights[i..i + n]) {
                *s += f32::from(*w) * v;
            }
        }
        let mut p = [0f32; MAX_LANES];
        for l in 0..n {
            p[l] = self.bias[l] + sums[l] * self.scale;
        }
        softmax(&mut p[..n]);
        Scores { len: n, p }
    }

    /// Each lane's probability for a request, scored as its features are found: no feature
    /// vector, no sort (the request path's form of [`Classifier::scores`]).
    pub fn score_request(&self, request: &Request<'_>) -> Scores {
        let mut s = Scoring {
            weights: &self.weights,
            mask: self.buckets - 1,
            stride: self.stride,
            sums: [[0; MAX_LANES]; GROUPS],
            counts: [0; GROUPS],
        };
        extract(request, &mut s);
        let n = self.lanes.len();
        let groups = s.counts.iter().filter(|&&c| c > 0).count().max(1) as f32;
        let mut p = [0f32; MAX_LANES];
        for (l, pl) in p.iter_mut().enumerate().take(n) {
            *pl = self.bias[l];
        }
        for g in 0..GROUPS {
            if s.counts[g] == 0 {
                continue;
            }
            let scale = self.scale / (s.counts[g] as f32 * groups).sqrt();
            for (pl, &sum) in p[..n].iter_mut().zip(&s.sums[g]) {
                *pl += sum as f32 * scale;
            }
        }
        softmax(&mut p[..n]);
        Scores { len: n, p }
    }

    /// How much feature `k` of the request pushed `lane` (for `--explain`).
    pub fn contribution(&self, h: &Hashed, k: usize, lane: usize) -> f32 {
        let i = (h.indices[k] & (self.buckets - 1)) as usize * self.stride + lane;
        f32::from(self.weights[i]) * self.scale * h.values[k]
    }
}

/// `weights` (`[bucket][lanes]`) with each bucket padded with zeros to `stride` lanes.
fn padded(weights: &[i8], lanes: usize, stride: usize) -> Vec<i8> {
    let mut out = vec![0i8; weights.len() / lanes * stride];
    for (to, from) in out
        .chunks_exact_mut(stride)
        .zip(weights.chunks_exact(lanes))
    {
        to[..lanes].copy_from_slice(from);
    }
    out
}

/// Sums each group's quantized weights as features arrive, in integers (exact: a request
/// has far fewer than 2^24 features of at most 127 each).
struct Scoring<'c> {
    weights: &'c [i8],
    mask: u32,
    stride: usize,
    sums: [[i32; MAX_LANES]; GROUPS],
    counts: [u32; GROUPS],
}

impl Sink for Scoring<'_> {
    #[inline]
    fn feature(&mut self, tag: &str, _text: &str, h: u64) {
        let g = group(tag);
        let i = (slot(h, self.mask + 1) & self.mask) as usize * self.stride;
        let sums = &mut self.sums[g];
        // Three or four lanes (the shipped case): one 4-byte load, four adds.
        if let Some(w) = self
            .weights
            .get(i..i + 4)
            .filter(|_| self.stride == 4)
            .and_then(|w| <&[i8; 4]>::try_from(w).ok())
        {
            for l in 0..4 {
                sums[l] += i32::from(w[l]);
            }
        } else {
            for (s, &w) in sums.iter_mut().zip(&self.weights[i..i + self.stride]) {
                *s += i32::from(w);
            }
        }
        self.counts[g] += 1;
    }
}

pub fn softmax(z: &mut [f32]) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in z.iter_mut() {
        *v /= sum;
    }
}

/// How the classifier's probabilities become a lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// A pricier lane within this much probability of the likeliest wins (an under-routed
    /// request costs the user more than a cent).
    pub margin: f32,
    /// A lane at least this likely keeps the choice at most one price step below it: a
    /// request that may well be `deep` goes to `daily`, never to `express`.
    pub guard: f32,
}

/// What [`choose`] decided: the classifier's own lane, and the lane the key is served on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// The lane to serve (an index into the classifier's lanes).
    pub lane: usize,
    /// The lane the classifier chose before the key's plan was considered.
    pub wanted: usize,
    /// The classifier's probability for `wanted`.
    pub p: f32,
}

impl Choice {
    /// Whether the plan moved the request off the classifier's lane.
    pub fn stepped(&self) -> bool {
        self.lane != self.wanted
    }
}

/// The lane to use among the classifier's (see [`Policy`]); then, if the key may not use
/// it, the nearest lane it may use, cheaper first (a deep request for a key without the deep
/// lane goes to daily, not express).
pub fn choose(
    p: &[f32],
    price: impl Fn(usize) -> f64,
    allowed: impl Fn(usize) -> bool,
    policy: Policy,
) -> Option<Choice> {
    let best = (0..p.len()).max_by(|&a, &b| {
        p[a].total_cmp(&p[b])
            .then_with(|| price(a).total_cmp(&price(b)))
    })?;
    let mut target = (0..p.len())
        .filter(|&l| price(l) > price(best) && p[l] >= p[best] - policy.margin)
        .max_by(|&a, &b| price(a).total_cmp(&price(b)))
        .unwrap_or(best);
    // The guard: for a likely lane far above the choice, lift the choice to the lane just
    // below it.
    for l in 0..p.len() {
        if p[l] < policy.guard || price(l) <= price(target) {
            continue;
        }
        let below = (0..p.len())
            .filter(|&m| price(m) < price(l))
            .max_by(|&a, &b| price(a).total_cmp(&price(b)));
        if let Some(below) = below.filter(|&m| price(m) > price(target)) {
            target = below;
        }
    }
    let choice = |lane| Choice {
        lane,
        wanted: target,
        p: p[target],
    };
    if allowed(target) {
        return Some(choice(target));
    }
    let t = price(target);
    let cheaper = (0..p.len())
        .filter(|&l| allowed(l) && price(l) <= t)
        .max_by(|&a, &b| {
            price(a)
                .total_cmp(&price(b))
                .then_with(|| p[a].total_cmp(&p[b]))
        });
    let pricier = || {
        (0..p.len())
            .filter(|&l| allowed(l))
            .min_by(|&a, &b| price(a).total_cmp(&price(b)))
    };
    cheaper.or_else(pricier).map(choice)
}

impl Classifier {
    pub fn policy(&self) -> Policy {
        Policy {
            margin: self.margin,
            guard: self.guard,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::classifier::Hashed;

    fn lanes() -> Vec<String> {
        ["express", "daily", "deep"].map(String::from).to_vec()
    }

    #[test]
    fn the_file_round_trips_byte_for_byte_and_scores_the_same() {
        let buckets = 1 << 10;
        let weights: Vec<f32> = (0..buckets * 3)
            .map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0)
            .collect();
        let c = Classifier::from_floats(
            lanes(),
            buckets as u32,
            (0.1, 0.3),
            vec![0.1, 0.0, -0.1],
            &weights,
            Provenance::default(),
        );
        let file = c.to_file();
        let back = Classifier::parse(&file).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.to_file(), file);
        let h = Hashed {
            buckets: buckets as u32,
            indices: vec![1, 5, 77, 900],
            values: vec![0.5; 4],
        };
        let s = back.scores(&h);
        assert!((s.as_slice().iter().sum::<f32>() - 1.0).abs() < 1e-5);
        // Quantization keeps the arithmetic close to the float model.
        let mut z = [0.1f32, 0.0, -0.1];
        for &i in &h.indices {
            for (l, zl) in z.iter_mut().enumerate() {
                *zl += weights[i as usize * 3 + l] / 2.0;
            }
        }
        softmax(&mut z);
        // 8-bit weights: within one step (max/127) of the float weights.
        for (a, b) in s.as_slice().iter().zip(z) {
            assert!((a - b).abs() < 1e-2, "{a} vs {b}");
        }
        assert_eq!(c.stride, 4);
        assert_eq!(c.weights.len(), buckets * 4);
        assert!(
            c.weights.chunks(4).all(|b| b[3] == 0),
            "padding lanes are zero"
        );
    }

    #[test]
    fn the_streaming_scorer_agrees_with_the_feature_vector() {
        let buckets = 1 << 12;
        let weights: Vec<f32> = (0..buckets * 3)
            .map(|i| ((i * 104_729) % 401) as f32 / 200.0 - 1.0)
            .collect();
        let c = Classifier::from_floats(
            lanes(),
            buckets as u32,
            (0.0, 1.0),
            vec![0.2, -0.1, 0.0],
            &weights,
            Provenance::default(),
        );
        for body in [
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi hi hi"}]}),
            serde_json::json!({"model": "m", "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "messages": [{"role": "user", "content": "证明 √2 is irrational; then lorem ipsum ".repeat(200)}]}),
        ] {
            let raw = serde_json::to_vec(&body).unwrap();
            let req = crate::wire::transcode::parse_request(crate::wire::Format::OpenAiChat, &raw)
                .unwrap();
            let a = c.score_request(&req);
            let b = c.scores(&Hashed::of(&req, buckets as u32));
            for (x, y) in a.as_slice().iter().zip(b.as_slice()) {
                assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let good = Classifier::from_floats(
            lanes(),
            256,
            (0.1, 1.0),
            vec![0.0; 3],
            &vec![0.5; 256 * 3],
            Provenance::default(),
        )
        .to_file();
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        for (field, bad, why) in [
            ("format", serde_json::json!("other"), "not a"),
            ("buckets", serde_json::json!(300), "power of two"),
            ("buckets", serde_json::json!(512), "bytes where"),
            ("bias", serde_json::json!([0.0]), "bias"),
            ("margin", serde_json::json!(0.9), "margin"),
            ("guard", serde_json::json!(1.5), "guard"),
            ("weights", serde_json::json!("!!"), "weights"),
        ] {
            let keep = v[field].clone();
            v[field] = bad;
            let err = Classifier::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(err.to_string().contains(why), "{field}: {err}");
            v[field] = keep;
        }
        assert!(Classifier::parse(b"{").is_err());
        // A version 1 file (16-bit weights over the previous features): refused, saying
        // what to do.
        v["version"] = serde_json::json!(1);
        let err = Classifier::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("retrain"), "{err}");
        v["version"] = serde_json::json!(VERSION);
        // -128 has no place in the symmetric range.
        let mut raw = vec![0u8; 256 * 3];
        raw[5] = 0x80;
        let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        v["weights"] = serde_json::json!(
            base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
        );
        let err = Classifier::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("-128"), "{err}");
    }

    #[test]
    fn quantization_keeps_signs_and_the_largest_weight() {
        let w = [4.0f32, -4.0, 0.02, -0.3, 0.0, 1.0];
        let c = Classifier::from_floats(
            ["a", "b", "c"].map(String::from).to_vec(),
            2,
            (0.0, 1.0),
            vec![0.0; 3],
            &w,
            Provenance::default(),
        );
        assert_eq!(c.weights, [127, -127, 1, 0, -10, 0, 32, 0]);
        assert!((c.scale - 4.0 / 127.0).abs() < 1e-7);
    }

    #[test]
    fn close_calls_go_to_the_pricier_lane_and_plans_bound_the_choice() {
        let price = |l: usize| [1.0, 2.0, 4.0][l];
        let all = |_| true;
        let at = |margin| Policy { margin, guard: 1.0 };
        // Clear winner.
        assert_eq!(
            choose(&[0.8, 0.15, 0.05], price, all, at(0.1)),
            Some(Choice {
                lane: 0,
                wanted: 0,
                p: 0.8
            })
        );
        // daily within the margin of express: daily.
        assert_eq!(
            choose(&[0.48, 0.42, 0.10], price, all, at(0.1))
                .unwrap()
                .lane,
            1
        );
        // deep within the margin of express too: the priciest close lane.
        assert_eq!(
            choose(&[0.40, 0.25, 0.35], price, all, at(0.1))
                .unwrap()
                .lane,
            2
        );
        // No margin: the likeliest.
        assert_eq!(
            choose(&[0.48, 0.42, 0.10], price, all, at(0.0))
                .unwrap()
                .lane,
            0
        );
        // deep is likeliest but the key may not use it: daily, not express; the choice
        // still names deep and its probability (for `X-Flux-Route-Rule`).
        let no_deep = |l: usize| l != 2;
        let stepped = choose(&[0.3, 0.1, 0.6], price, no_deep, at(0.1)).unwrap();
        assert_eq!((stepped.lane, stepped.wanted, stepped.p), (1, 2, 0.6));
        assert!(stepped.stepped());
        // Only deep allowed: deep.
        assert_eq!(
            choose(&[0.9, 0.05, 0.05], price, |l| l == 2, at(0.1))
                .unwrap()
                .lane,
            2
        );
        assert_eq!(choose(&[0.9, 0.05, 0.05], price, |_| false, at(0.1)), None);
    }

    #[test]
    fn the_guard_keeps_a_likely_deep_request_off_express() {
        let price = |l: usize| [1.0, 2.0, 4.0][l];
        let guarded = Policy {
            margin: 0.0,
            guard: 0.25,
        };
        // express likeliest, deep at 0.3: daily (one step below deep), not express.
        assert_eq!(
            choose(&[0.6, 0.1, 0.3], price, |_| true, guarded)
                .unwrap()
                .lane,
            1
        );
        // deep below the guard: express stands.
        assert_eq!(
            choose(&[0.7, 0.1, 0.2], price, |_| true, guarded)
                .unwrap()
                .lane,
            0
        );
        // daily likely: no lift (it is one step away).
        assert_eq!(
            choose(&[0.6, 0.35, 0.05], price, |_| true, guarded)
                .unwrap()
                .lane,
            0
        );
    }
}
