//! Key choice for the random workloads: uniform over the range, or YCSB's
//! zipfian generator (Gray et al., "Quickly generating billion-record
//! synthetic databases") scrambled so that the popular keys are spread over
//! the range rather than packed at its start.
//!
//! The zipfian generator draws a rank in `0..n` with probability
//! proportional to `1 / (rank + 1)^theta`; rank 0 is the most popular.
//! Scrambling maps the rank through a 64-bit FNV-1a hash, mod `n`, as YCSB's
//! `ScrambledZipfianGenerator` does (several ranks may land on one key, as
//! there).

use rand::Rng;

use super::args::Distribution;

/// A zipfian rank generator over `0..n`; the constants are computed once
/// (zeta(n) is O(n): about 0.1 s per 10 M keys) and shared by the threads.
#[derive(Clone, Debug)]
pub struct Zipf {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipf {
    pub fn new(items: u64, theta: f64) -> Zipf {
        assert!(items >= 1, "zipf over no items");
        assert!(theta > 0.0 && theta < 1.0, "zipf theta {theta}");
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(items);
        let zeta_2 = zeta(2.min(items));
        let eta = if items <= 2 {
            0.0
        } else {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        };
        Zipf {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
            half_pow_theta: 0.5f64.powf(theta),
        }
    }

    /// A rank in `0..items`.
    pub fn rank<R: Rng>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.items - 1);
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }

    pub fn theta(&self) -> f64 {
        self.theta
    }
}

fn fnv1a_64(value: u64) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

/// Chooses key offsets in `0..keys` (added to `-K` by the caller).
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipf(std::sync::Arc<Zipf>),
}

impl KeyChooser {
    pub fn new(keys: u64, distribution: Distribution) -> KeyChooser {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { keys },
            Distribution::Zipf { theta } => {
                KeyChooser::Zipf(std::sync::Arc::new(Zipf::new(keys, theta)))
            }
        }
    }

    pub fn next<R: Rng>(&self, rng: &mut R) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => rng.gen_range(0..*keys),
            KeyChooser::Zipf(z) => fnv1a_64(z.rank(rng)) % z.items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn zipf_ranks_are_skewed_and_in_range() {
        let z = Zipf::new(1000, 0.99);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..200_000 {
            counts[z.rank(&mut rng) as usize] += 1;
        }
        // Rank 0 has p = 1/zeta(1000) ≈ 0.13; rank 1 about half that.
        let p0 = f64::from(counts[0]) / 200_000.0;
        assert!((0.11..0.16).contains(&p0), "p0 {p0}");
        assert!(counts[1] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn scrambled_keys_stay_in_range_and_spread() {
        let chooser = KeyChooser::new(100, Distribution::Zipf { theta: 0.99 });
        let mut rng = StdRng::seed_from_u64(1);
        let mut hot = [0u32; 100];
        for _ in 0..10_000 {
            hot[chooser.next(&mut rng) as usize] += 1;
        }
        let hottest = hot.iter().enumerate().max_by_key(|(_, c)| **c).unwrap().0;
        assert_eq!(hottest as u64, fnv1a_64(0) % 100);
        let tiny = KeyChooser::new(1, Distribution::Zipf { theta: 0.5 });
        assert_eq!(tiny.next(&mut rng), 0);
    }
}
