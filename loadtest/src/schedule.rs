//! When each arrival of an open-loop run is due: a linear ramp from 0 to `rate`, then
//! steady; or steps (`rate`, `rate + add`, ... up to `until`, each lasting `every`).
//! Arrival `i` (0-based) is due when the expected count of arrivals reaches `i + 1`:
//! during the ramp N(t) = rate t² / (2 ramp), after it N(t) = rate ramp / 2 + rate (t - ramp);
//! over steps, the sum of each finished step's rate × `every` plus the current one's.

use std::time::Duration;

/// An open-loop arrival profile.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub rate: f64,
    pub ramp: Duration,
    pub duration: Duration,
    /// Steps instead of a ramp.
    pub steps: Option<Steps>,
}

/// A step profile: `add` more arrivals per second every `every`, up to `until`.
#[derive(Debug, Clone, Copy)]
pub struct Steps {
    pub add: f64,
    pub every: Duration,
    pub until: f64,
}

impl Profile {
    /// When arrival `i` is due, or `None` past the end.
    pub fn due(&self, i: u64) -> Option<Duration> {
        let n = (i + 1) as f64;
        if let Some(st) = self.steps {
            let every = st.every.as_secs_f64();
            let mut before = 0.0;
            for k in 0.. {
                let start = k as f64 * every;
                if start > self.duration.as_secs_f64() {
                    return None;
                }
                let r = self.step_rate(k);
                if n <= before + r * every {
                    let t = Duration::from_secs_f64(start + (n - before) / r);
                    return (t <= self.duration).then_some(t);
                }
                before += r * every;
            }
        }
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

    /// The step `t` falls in (0 without steps).
    pub fn step_of(&self, t: Duration) -> usize {
        match self.steps {
            Some(st) => (t.as_secs_f64() / st.every.as_secs_f64()) as usize,
            None => 0,
        }
    }

    /// Step `k`'s arrivals per second.
    pub fn step_rate(&self, k: usize) -> f64 {
        match self.steps {
            Some(st) => (self.rate + k as f64 * st.add).min(st.until),
            None => self.rate,
        }
    }

    /// Arrivals per second intended at `t`.
    pub fn rate_at(&self, t: Duration) -> f64 {
        if self.steps.is_some() {
            return self.step_rate(self.step_of(t));
        }
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
            steps: None,
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
            steps: None,
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

    #[test]
    fn steps_raise_the_rate_and_stop_at_until() {
        let p = Profile {
            rate: 10.0,
            ramp: Duration::ZERO,
            duration: Duration::from_secs(4),
            steps: Some(Steps {
                add: 10.0,
                every: Duration::from_secs(1),
                until: 25.0,
            }),
        };
        let times: Vec<Duration> = (0..).map_while(|i| p.due(i)).collect();
        // 10 + 20 + 25 + 25 arrivals.
        assert_eq!(times.len(), 80);
        let in_step = |k: u64| {
            times
                .iter()
                .filter(|t| t.as_secs_f64() > k as f64 && t.as_secs_f64() <= (k + 1) as f64)
                .count()
        };
        assert_eq!((in_step(0), in_step(1), in_step(2)), (10, 20, 25));
        assert_eq!(p.step_of(Duration::from_millis(2500)), 2);
        assert_eq!(p.step_rate(7), 25.0);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }
}
