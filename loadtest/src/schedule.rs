//! When each arrival of an open-loop run is due: a linear ramp from 0 to `rate`, then
//! steady. Arrival `i` (0-based) is due when the expected count of arrivals reaches `i + 1`:
//! during the ramp N(t) = rate t² / (2 ramp), after it N(t) = rate ramp / 2 + rate (t - ramp).

use std::time::Duration;

/// An open-loop arrival profile.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub rate: f64,
    pub ramp: Duration,
    pub duration: Duration,
}

impl Profile {
    /// When arrival `i` is due, or `None` past the end.
    pub fn due(&self, i: u64) -> Option<Duration> {
        let n = (i + 1) as f64;
        let ramp = self.ramp.as_secs_f64();
        let in_ramp = self.rate * ramp / 2.0;
        let t = if n <= in_ramp && ramp > 0.0 {
            (2.0 * n * ramp / self.rate).sqrt()
        } else {
            ramp + (n - in_ramp) / self.rate
        };
        let t = Duration::from_secs_f64(t);
        (t <= self.duration).then_some(t)
    }

    /// Arrivals per second intended at `t`.
    pub fn rate_at(&self, t: Duration) -> f64 {
        if t < self.ramp {
            self.rate * t.as_secs_f64() / self.ramp.as_secs_f64()
        } else {
            self.rate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_arrivals_are_evenly_spaced() {
        let p = Profile {
            rate: 100.0,
            ramp: Duration::ZERO,
            duration: Duration::from_secs(2),
        };
        assert_eq!(p.due(0), Some(Duration::from_millis(10)));
        assert_eq!(p.due(99), Some(Duration::from_secs(1)));
        assert_eq!(p.due(199), Some(Duration::from_secs(2)));
        assert_eq!(p.due(200), None);
    }

    #[test]
    fn a_ramp_starts_slow_and_reaches_the_rate() {
        let p = Profile {
            rate: 100.0,
            ramp: Duration::from_secs(2),
            duration: Duration::from_secs(4),
        };
        let times: Vec<Duration> = (0..).map_while(|i| p.due(i)).collect();
        // 100 during the ramp (half of 2 s at full rate), 200 after.
        assert!((299..=300).contains(&times.len()), "{}", times.len());
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        let first_second = times.iter().filter(|t| t.as_secs_f64() <= 1.0).count();
        assert!((24..=26).contains(&first_second), "{first_second}");
        let gap = times[250] - times[249];
        assert!((gap.as_secs_f64() - 0.01).abs() < 1e-6, "{gap:?}");
        assert_eq!(p.rate_at(Duration::from_secs(1)), 50.0);
    }
}
