//! How a router is scored (ROUTING.md): accuracy, under-routing, the cost index against
//! always-`daily`, and the confusion matrix.

use std::fmt::Write;

/// The policy's nominal lane prices (ROUTING.md); other lanes count as `daily`.
pub fn nominal_price(lane: &str) -> f64 {
    match lane {
        "express" => 1.0,
        "daily" | "image" => 2.0,
        "deep" => 4.0,
        _ => 2.0,
    }
}

/// The errors users notice: a `deep` request sent to `express`, or image input sent to a lane
/// that cannot see it.
pub fn under_routes(label: &str, chosen: &str) -> bool {
    (label == "deep" && chosen == "express") || (label == "image" && chosen != "image")
}

/// Decisions against labels.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Lanes in display order (by nominal price, then name).
    lanes: Vec<String>,
    /// `matrix[label][chosen]`.
    matrix: Vec<Vec<u64>>,
}

impl Tally {
    fn index(&mut self, lane: &str) -> usize {
        if let Some(i) = self.lanes.iter().position(|l| l == lane) {
            return i;
        }
        self.lanes.push(lane.to_string());
        for row in &mut self.matrix {
            row.push(0);
        }
        self.matrix.push(vec![0; self.lanes.len()]);
        self.lanes.len() - 1
    }

    pub fn add(&mut self, label: &str, chosen: &str) {
        let l = self.index(label);
        let c = self.index(chosen);
        self.matrix[l][c] += 1;
    }

    pub fn total(&self) -> u64 {
        self.matrix.iter().flatten().sum()
    }

    pub fn correct(&self) -> u64 {
        (0..self.lanes.len()).map(|i| self.matrix[i][i]).sum()
    }

    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.total().max(1) as f64
    }

    pub fn under_routed(&self) -> u64 {
        self.pairs()
            .filter(|(l, c, _)| under_routes(l, c))
            .map(|(_, _, n)| n)
            .sum()
    }

    /// Summed nominal price of the chosen lanes over always-`daily`'s.
    pub fn cost_index(&self) -> f64 {
        let chosen: f64 = self
            .pairs()
            .map(|(_, c, n)| nominal_price(c) * n as f64)
            .sum();
        chosen / (2.0 * self.total().max(1) as f64)
    }

    /// The cost index a perfect router would have on the same labels.
    pub fn ideal_cost_index(&self) -> f64 {
        let ideal: f64 = self
            .pairs()
            .map(|(l, _, n)| nominal_price(l) * n as f64)
            .sum();
        ideal / (2.0 * self.total().max(1) as f64)
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str, u64)> + '_ {
        self.lanes.iter().enumerate().flat_map(move |(li, l)| {
            self.lanes
                .iter()
                .enumerate()
                .map(move |(ci, c)| (l.as_str(), c.as_str(), self.matrix[li][ci]))
        })
    }

    fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.lanes.len()).collect();
        order.sort_by(|&a, &b| {
            nominal_price(&self.lanes[a])
                .total_cmp(&nominal_price(&self.lanes[b]))
                .then_with(|| self.lanes[a].cmp(&self.lanes[b]))
        });
        order
    }

    /// The three metrics, per-lane accuracy and the confusion matrix, as text.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "requests {}  accuracy {:.1}% ({}/{})  under-routed {}  cost index {:.3} (perfect {:.3})",
            self.total(),
            100.0 * self.accuracy(),
            self.correct(),
            self.total(),
            self.under_routed(),
            self.cost_index(),
            self.ideal_cost_index(),
        );
        let order = self.order();
        let per_lane: Vec<String> = order
            .iter()
            .map(|&i| {
                let n: u64 = self.matrix[i].iter().sum();
                format!(
                    "{} {:.0}% ({}/{})",
                    self.lanes[i],
                    100.0 * self.matrix[i][i] as f64 / n.max(1) as f64,
                    self.matrix[i][i],
                    n
                )
            })
            .collect();
        let _ = writeln!(out, "per lane: {}", per_lane.join(", "));
        let _ = write!(out, "{:<14}", "label \\ chosen");
        for &c in &order {
            let _ = write!(out, "{:>9}", self.lanes[c]);
        }
        out.push('\n');
        for &l in &order {
            let _ = write!(out, "{:<14}", self.lanes[l]);
            for &c in &order {
                let _ = write!(out, "{:>9}", self.matrix[l][c]);
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_the_policy() {
        let mut t = Tally::default();
        for (label, chosen, n) in [
            ("express", "express", 3),
            ("daily", "daily", 2),
            ("daily", "deep", 1),
            ("deep", "express", 1),
            ("deep", "deep", 2),
            ("image", "daily", 1),
        ] {
            for _ in 0..n {
                t.add(label, chosen);
            }
        }
        assert_eq!(t.total(), 10);
        assert_eq!(t.correct(), 7);
        assert_eq!(t.under_routed(), 2);
        // chosen: 4 express (4) + 3 daily (6) + 3 deep (12) = 22 over 20.
        assert!((t.cost_index() - 1.1).abs() < 1e-9);
        // labels: 3 express + 3 daily + 3 deep + 1 image = 3 + 6 + 12 + 2 = 23 over 20.
        assert!((t.ideal_cost_index() - 1.15).abs() < 1e-9);
        let r = t.report();
        assert!(r.contains("accuracy 70.0%"), "{r}");
        assert!(r.contains("under-routed 2"), "{r}");
        let header = r.lines().nth(2).unwrap();
        assert!(
            header.ends_with("  express    daily    image     deep"),
            "{r}"
        );
    }
}
