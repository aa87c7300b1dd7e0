//! Command-line flag parsing shared by the benchmark binaries
//! (storage-bench, spdk-bench, index-bench): numbers in decimal or hex with
//! `_` separators, `--flag value` and `--flag=value`, and the one-line
//! [`Usage`] error that makes a binary exit with code 2.

/// A bad flag (exit code 2), as one line.
pub struct Usage(pub String);

/// `text` as a number: decimal, or hex after `0x`/`0X`; `_` is ignored.
pub fn parse_number(flag: &str, text: &str) -> Result<u64, Usage> {
    let clean = text.replace('_', "");
    let parsed = match clean
        .strip_prefix("0x")
        .or_else(|| clean.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => clean.parse(),
    };
    parsed.map_err(|_| Usage(format!("{flag}: {text:?} is not a number")))
}

/// `text` as a number in `range`.
pub fn parse_in(
    flag: &str,
    text: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, Usage> {
    let n = parse_number(flag, text)?;
    if !range.contains(&n) {
        return Err(Usage(format!(
            "{flag}: {n} is not in {}..={}",
            range.start(),
            range.end()
        )));
    }
    Ok(n)
}

/// A comma-separated list of numbers (empty items are skipped).
pub fn parse_list(flag: &str, text: &str) -> Result<Vec<u64>, Usage> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_number(flag, s))
        .collect()
}

/// An argument split into its flag and the value written after `=` in the
/// same argument (`--flag=value`), if any.
pub fn split_flag(arg: &str) -> (&str, Option<String>) {
    match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
        _ => (arg, None),
    }
}

/// The value of `flag`: the one written after `=`, else the next argument.
pub fn flag_value<'a>(
    flag: &str,
    inline: Option<String>,
    rest: &mut impl Iterator<Item = &'a String>,
) -> Result<String, Usage> {
    match inline {
        Some(v) => Ok(v),
        None => rest
            .next()
            .cloned()
            .ok_or_else(|| Usage(format!("{flag} needs a value"))),
    }
}

/// Walks `args`: `--help` or `-h` prints `usage` and exits with code 0;
/// each flag of `switches` takes no value and sets its `bool`; each in
/// `valued` is passed to `set` with its value (after `=` or the next
/// argument); anything else is an unknown argument.
pub fn parse_args(
    args: &[String],
    usage: &str,
    switches: &mut [(&str, &mut bool)],
    valued: &[&str],
    mut set: impl FnMut(&str, String) -> Result<(), Usage>,
) -> Result<(), Usage> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = split_flag(arg);
        let switch = switches.iter_mut().find(|(name, _)| *name == flag);
        if flag == "--help" || flag == "-h" || switch.is_some() {
            if inline.is_some() {
                return Err(Usage(format!("{flag} takes no value")));
            }
            match switch {
                Some((_, on)) => **on = true,
                None => {
                    println!("{usage}");
                    std::process::exit(0);
                }
            }
            continue;
        }
        if !valued.contains(&flag) {
            return Err(Usage(format!("unknown argument {arg:?}")));
        }
        let value = flag_value(flag, inline, &mut it)?;
        set(flag, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_flags() {
        assert_eq!(parse_number("--n", "1_000").ok(), Some(1000));
        assert_eq!(parse_number("--n", "0x5A00_0000").ok(), Some(0x5A00_0000));
        assert!(parse_number("--n", "x").is_err());
        assert_eq!(parse_in("--n", "64", 1..=64).ok(), Some(64));
        let Err(Usage(e)) = parse_in("--n", "0", 1..=64) else {
            panic!("0 is out of range")
        };
        assert_eq!(e, "--n: 0 is not in 1..=64");
        assert_eq!(parse_list("--n", "1, 2,,3").ok(), Some(vec![1, 2, 3]));
        assert_eq!(split_flag("--a=b"), ("--a", Some("b".to_string())));
        assert_eq!(split_flag("a=b"), ("a=b", None));
        let args = ["v".to_string()];
        let mut it = args.iter();
        assert_eq!(flag_value("--a", None, &mut it).ok().as_deref(), Some("v"));
        assert!(flag_value("--a", None, &mut it).is_err());
        let args: Vec<String> = ["--q", "--n=1", "--n", "2"].map(String::from).into();
        let (mut q, mut seen) = (false, Vec::new());
        let parsed = parse_args(&args, "usage", &mut [("--q", &mut q)], &["--n"], |f, v| {
            seen.push((f.to_string(), v));
            Ok(())
        });
        assert!(parsed.is_ok() && q);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1], ("--n".to_string(), "2".to_string()));
        for bad in ["--q=1", "--x", "--n"] {
            let args = vec![bad.to_string()];
            let mut q = false;
            let parsed = parse_args(&args, "usage", &mut [("--q", &mut q)], &["--n"], |_, _| {
                Ok(())
            });
            assert!(parsed.is_err());
        }
    }
}
