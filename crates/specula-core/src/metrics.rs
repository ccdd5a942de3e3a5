//! Per-request timing: time to first token, inter-token latency percentiles, throughput.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Summary of a latency sample, in milliseconds.
///
/// Percentiles use the nearest-rank method: `p50` is the smallest value with at least half of the
/// sample at or below it.
///
/// ```
/// use specula_core::LatencyStats;
/// use std::time::Duration;
/// let s = LatencyStats::from_durations(&[1, 2, 3, 4, 100].map(Duration::from_millis));
/// assert_eq!(s.p50_ms, 3.0);
/// assert_eq!(s.p99_ms, 100.0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Number of samples.
    pub count: usize,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl LatencyStats {
    /// Summarises a sample of durations (all zero for an empty sample).
    pub fn from_durations(samples: &[Duration]) -> Self {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Self::from_millis(&ms)
    }

    /// Summarises a sample given in milliseconds.
    pub fn from_millis(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let r = (q * v.len() as f64).ceil() as usize;
            v[r.clamp(1, v.len()) - 1]
        };
        LatencyStats {
            count: v.len(),
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: v[v.len() - 1],
        }
    }
}

/// Timing of one generation request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationMetrics {
    /// Tokens in the prompt (after the chat template, if any).
    pub prompt_tokens: usize,
    /// Tokens generated and returned.
    pub new_tokens: usize,
    /// Time of the prompt forward pass.
    pub prefill_ms: f64,
    /// Time from the start of the request to the first new token.
    pub ttft_ms: f64,
    /// Time from the first to the last new token.
    pub decode_ms: f64,
    /// Wall time of the whole request.
    pub total_ms: f64,
    /// Prompt tokens per second during prefill.
    pub prefill_tokens_per_s: f64,
    /// New tokens per second after the first one (`(new_tokens - 1) / decode time`).
    pub decode_tokens_per_s: f64,
    /// Every gap between consecutive new tokens, in milliseconds.
    pub inter_token_ms: Vec<f64>,
    /// Percentiles of `inter_token_ms`.
    pub inter_token: LatencyStats,
}

impl GenerationMetrics {
    /// Builds the metrics from raw timings: `start` of the request, `prefill` duration, and the
    /// instant each new token became available (relative to `start`).
    pub fn from_timings(
        prompt_tokens: usize,
        prefill: Duration,
        token_times: &[Duration],
        total: Duration,
    ) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let gaps: Vec<f64> = token_times
            .windows(2)
            .map(|w| ms(w[1].saturating_sub(w[0])))
            .collect();
        let ttft_ms = token_times.first().map_or(0.0, |&d| ms(d));
        let decode_ms = match (token_times.first(), token_times.last()) {
            (Some(&a), Some(&b)) => ms(b.saturating_sub(a)),
            _ => 0.0,
        };
        let per_s = |n: usize, t_ms: f64| {
            if t_ms > 0.0 {
                n as f64 * 1e3 / t_ms
            } else {
                0.0
            }
        };
        GenerationMetrics {
            prompt_tokens,
            new_tokens: token_times.len(),
            prefill_ms: ms(prefill),
            ttft_ms,
            decode_ms,
            total_ms: ms(total),
            prefill_tokens_per_s: per_s(prompt_tokens, ms(prefill)),
            decode_tokens_per_s: per_s(token_times.len().saturating_sub(1), decode_ms),
            inter_token: LatencyStats::from_millis(&gaps),
            inter_token_ms: gaps,
        }
    }

    /// One human-readable line.
    pub fn summary(&self) -> String {
        format!(
            "{} prompt tokens, {} new tokens | prefill {:.1} tok/s | TTFT {:.1} ms | decode {:.2} tok/s | ITL p50 {:.1} / p95 {:.1} / p99 {:.1} ms",
            self.prompt_tokens,
            self.new_tokens,
            self.prefill_tokens_per_s,
            self.ttft_ms,
            self.decode_tokens_per_s,
            self.inter_token.p50_ms,
            self.inter_token.p95_ms,
            self.inter_token.p99_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        let s = LatencyStats::from_millis(&v);
        assert_eq!(
            (s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(s.mean_ms, 50.5);
        assert_eq!(LatencyStats::from_millis(&[]).count, 0);
    }

    #[test]
    fn metrics_from_timings() {
        let t = [10, 30, 40, 70].map(Duration::from_millis);
        let m = GenerationMetrics::from_timings(
            8,
            Duration::from_millis(9),
            &t,
            Duration::from_millis(71),
        );
        assert_eq!(m.new_tokens, 4);
        assert_eq!(m.inter_token_ms, vec![20.0, 10.0, 30.0]);
        assert_eq!(m.ttft_ms, 10.0);
        assert!((m.decode_tokens_per_s - 50.0).abs() < 1e-9);
        assert!((m.prefill_tokens_per_s - 8000.0 / 9.0).abs() < 1e-6);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"ttft_ms\":10.0"));
    }
}
