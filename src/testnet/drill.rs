//! Drills on a running net's links, as lines of text: what `dtrain swarm
//! --net` reads on its standard input, so that an operator (or a test)
//! can cut a node off mid-round, split the hosts in two, and heal it all,
//! and watch the network go on.
//!
//! - `cut 3` (or `cut 2,3`): those hosts lose every link to the others;
//! - `partition 0,1 2,3`: the hosts of each side lose the other side;
//! - `heal`: every link is restored.

use super::Net;

#[derive(Debug, Clone, PartialEq)]
pub enum Drill {
    Cut(Vec<usize>),
    Partition(Vec<usize>, Vec<usize>),
    Heal,
}

/// How the lines are written, for error messages and `--help`.
pub const SYNTAX: &str = "`cut H[,H…]`, `partition H,… H,…` or `heal` (H: a host, 0 = the master validator, 1… the miners)";

impl Drill {
    /// One line for a net of `hosts` hosts.
    pub fn parse(line: &str, hosts: usize) -> Result<Drill, String> {
        let list = |s: &str| -> Result<Vec<usize>, String> {
            let v: Vec<usize> =
                s.split(',').map(|h| h.trim().parse::<usize>().map_err(|_| format!("{h:?} is not a host number"))).collect::<Result<_, _>>()?;
            match v.iter().find(|&&h| h >= hosts) {
                Some(h) => Err(format!("host {h} is not one of the {hosts} hosts")),
                None => Ok(v),
            }
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["cut", hosts] => Ok(Drill::Cut(list(hosts)?)),
            ["partition", a, b] => {
                let (a, b) = (list(a)?, list(b)?);
                match a.iter().find(|h| b.contains(h)) {
                    Some(h) => Err(format!("host {h} is on both sides")),
                    None => Ok(Drill::Partition(a, b)),
                }
            }
            ["heal"] => Ok(Drill::Heal),
            _ => Err(format!("{line:?}: a drill is {SYNTAX}")),
        }
    }

    pub fn apply(&self, net: &Net) {
        match self {
            Drill::Cut(hosts) => hosts.iter().for_each(|&h| net.cut(h, true)),
            Drill::Partition(a, b) => net.partition(a, b, true),
            Drill::Heal => {
                let all: Vec<usize> = (0..net.len()).collect();
                net.partition(&all, &all, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_or_say_why_not() {
        assert_eq!(Drill::parse("cut 3", 4), Ok(Drill::Cut(vec![3])));
        assert_eq!(Drill::parse("  cut 1,2 ", 4), Ok(Drill::Cut(vec![1, 2])));
        assert_eq!(Drill::parse("partition 0,1 2,3", 4), Ok(Drill::Partition(vec![0, 1], vec![2, 3])));
        assert_eq!(Drill::parse("heal", 4), Ok(Drill::Heal));
        assert!(Drill::parse("cut 4", 4).unwrap_err().contains("host 4"));
        assert!(Drill::parse("cut x", 4).unwrap_err().contains("not a host"));
        assert!(Drill::parse("partition 0,1 1,2", 4).unwrap_err().contains("both sides"));
        assert!(Drill::parse("cut", 4).unwrap_err().contains("a drill is"));
        assert!(Drill::parse("heal now", 4).unwrap_err().contains("a drill is"));
        assert!(Drill::parse("", 4).is_err());
    }
}
