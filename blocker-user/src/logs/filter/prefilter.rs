//! The fast path: for each failregex, a set of literal strings one of which every line it
//! matches must contain. One Aho-Corasick pass over a line tells which expressions can match
//! it at all; most lines of a log contain none and never reach the regex engine.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use memchr::memmem::Finder;

/// Which expressions a line can match: those whose required literal it contains, and those
/// with no required literal (always tried).
#[derive(Debug)]
pub struct Prefilter {
    /// Whether a line holds any literal: leftmost-first, which lets the automaton use its
    /// SIMD scan (Teddy), where the overlapping search below cannot.
    any_literal: Option<AhoCorasick>,
    /// Which literals a line holds, for the lines that hold one.
    automaton: Option<AhoCorasick>,
    /// Pattern id of the automaton → index of its expression.
    pattern_owner: Vec<usize>,
    always: Vec<usize>,
    /// Per expression, the other literals every match contains, checked on a hit.
    also_required: Vec<Vec<Finder<'static>>>,
}

impl Prefilter {
    /// `patterns` are the expanded failregexes, in order.
    pub fn new(patterns: &[String]) -> Prefilter {
        let mut literals = Vec::new();
        let mut pattern_owner = Vec::new();
        let mut always = Vec::new();
        let mut case_insensitive = false;
        let mut also_required = Vec::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let needs = needs(pattern);
            let ignores_case = pattern.contains("(?i");
            also_required.push(if ignores_case {
                Vec::new()
            } else {
                needs
                    .all
                    .iter()
                    .map(|literal| Finder::new(literal.as_bytes()).into_owned())
                    .collect()
            });
            match needs.best {
                Some(set) => {
                    case_insensitive |= ignores_case;
                    for literal in set {
                        literals.push(literal);
                        pattern_owner.push(index);
                    }
                }
                None => always.push(index),
            }
        }
        let build = |kind: MatchKind| {
            AhoCorasick::builder()
                .match_kind(kind)
                .kind(Some(AhoCorasickKind::DFA))
                .ascii_case_insensitive(case_insensitive)
                .build(&literals)
                .ok()
        };
        let (any_literal, automaton) = if literals.is_empty() {
            (None, None)
        } else {
            (build(MatchKind::LeftmostFirst), build(MatchKind::Standard))
        };
        if any_literal.is_none() || automaton.is_none() {
            always = (0..patterns.len()).collect();
        }
        Prefilter {
            any_literal,
            automaton,
            pattern_owner,
            always,
            also_required,
        }
    }

    /// The expressions to try on `line`, in their order; empty for most lines.
    pub fn candidates(&self, line: &str) -> Vec<usize> {
        if let Some(any_literal) = &self.any_literal {
            if self.always.is_empty() && !any_literal.is_match(line) {
                return Vec::new();
            }
        }
        let mut hit = vec![false; self.also_required.len()];
        if let Some(automaton) = &self.automaton {
            for found in automaton.find_overlapping_iter(line) {
                hit[self.pattern_owner[found.pattern().as_usize()]] = true;
            }
        }
        for &index in &self.always {
            hit[index] = true;
        }
        let contains_all = |index: usize| {
            self.also_required[index]
                .iter()
                .all(|finder| finder.find(line.as_bytes()).is_some())
        };
        hit.iter()
            .enumerate()
            .filter_map(|(index, &hit)| (hit && contains_all(index)).then_some(index))
            .collect()
    }
}

/// What every match of `pattern` needs: `best` is a set of literals one of which it contains
/// (None when no such set was found: a branch without literals, verbose mode...), `all` the
/// literals it contains every one of.
fn needs(pattern: &str) -> Needs {
    if pattern.contains("(?x") {
        return Needs::default();
    }
    let chars: Vec<char> = pattern.chars().collect();
    sequence(&chars, 0).0
}

type Requirement = Option<Vec<String>>;

/// What one part of a pattern needs: the most selective requirement, and every literal a
/// match must contain (all of them, checked after the automaton found the selective one).
#[derive(Default)]
struct Needs {
    best: Requirement,
    all: Vec<String>,
}

impl Needs {
    /// A literal every match contains. Its leading and trailing spaces and punctuation are
    /// dropped: they are in most log lines and make the automaton's fast scan useless.
    fn literal(&mut self, run: &mut String) {
        let literal = std::mem::take(run);
        let trimmed = literal.trim_matches(|c: char| !c.is_alphanumeric());
        if trimmed.is_empty() {
            return;
        }
        self.all.push(trimmed.to_string());
        self.consider(Some(vec![trimmed.to_string()]));
    }

    fn consider(&mut self, requirement: Requirement) {
        if score(&requirement) > score(&self.best) {
            self.best = requirement;
        }
    }
}

/// How selective a requirement is: its shortest literal's length (longer is rarer).
fn score(requirement: &Requirement) -> usize {
    requirement
        .as_ref()
        .and_then(|set| set.iter().map(|literal| literal.chars().count()).min())
        .unwrap_or(0)
}

/// Parses alternatives from `start` up to an unmatched `)` or the end; returns what they
/// need and where it stopped.
fn sequence(chars: &[char], start: usize) -> (Needs, usize) {
    let mut branches: Vec<Requirement> = Vec::new();
    let mut needs = Needs::default();
    let mut run = String::new();
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ')' => break,
            '|' => {
                needs.literal(&mut run);
                branches.push(std::mem::take(&mut needs).best);
                i += 1;
            }
            '(' => {
                needs.literal(&mut run);
                let (inner, end) = group(chars, i);
                i = end;
                if !optional_quantifier(chars, i) {
                    needs.all.extend(inner.all);
                    needs.consider(inner.best);
                }
                i = skip_quantifier(chars, i);
            }
            '[' => {
                needs.literal(&mut run);
                i = skip_class(chars, i);
                i = skip_quantifier(chars, i);
            }
            '\\' => {
                let escaped = chars.get(i + 1).copied();
                i += 2;
                match escaped {
                    Some(e) if e.is_ascii_punctuation() || e == ' ' => {
                        literal_char(chars, &mut i, e, &mut run, &mut needs)
                    }
                    _ => {
                        needs.literal(&mut run);
                        i = skip_quantifier(chars, i);
                    }
                }
            }
            '.' | '^' | '$' | '*' | '+' | '?' | '{' => {
                needs.literal(&mut run);
                i = skip_quantifier(chars, i + 1);
            }
            _ => {
                i += 1;
                literal_char(chars, &mut i, c, &mut run, &mut needs);
            }
        }
    }
    needs.literal(&mut run);
    if branches.is_empty() {
        return (needs, i);
    }
    branches.push(needs.best);
    let mut union = Some(Vec::new());
    for branch in branches {
        match (branch.filter(|set| !set.is_empty()), union.as_mut()) {
            (Some(set), Some(all)) => all.extend(set),
            _ => union = None,
        }
    }
    // With alternatives, no single literal is needed by every match.
    (
        Needs {
            best: union,
            all: Vec::new(),
        },
        i,
    )
}

/// A literal character at `i - 1`: part of the run unless a quantifier makes it optional.
fn literal_char(chars: &[char], i: &mut usize, c: char, run: &mut String, needs: &mut Needs) {
    if optional_quantifier(chars, *i) {
        needs.literal(run);
        *i = skip_quantifier(chars, *i);
        return;
    }
    run.push(c);
    if matches!(chars.get(*i), Some('+') | Some('{')) {
        needs.literal(run);
        *i = skip_quantifier(chars, *i);
    }
}

/// What the group opening at `open` needs, and the index after its `)`.
fn group(chars: &[char], open: usize) -> (Needs, usize) {
    let rest: String = chars[open + 1..chars.len().min(open + 5)].iter().collect();
    // Look-arounds and conditionals do not consume what they mention.
    let (consumes, mut body) = if rest.starts_with("?=") || rest.starts_with("?!") {
        (false, open + 3)
    } else if rest.starts_with("?<=") || rest.starts_with("?<!") {
        (false, open + 4)
    } else if rest.starts_with("?(") {
        let condition_end = (open + 2..chars.len()).find(|&i| chars[i] == ')');
        (false, condition_end.map_or(chars.len(), |end| end + 1))
    } else {
        (true, open + 1)
    };
    if consumes && chars.get(body) == Some(&'?') {
        // Skip `?:`, `?P<name>`, `?<name>`, `?i:`; `?i)` and `?P=name)` hold nothing.
        while body < chars.len() && ![':', '>', ')'].contains(&chars[body]) {
            body += 1;
        }
        if chars.get(body) == Some(&')') {
            return (Needs::default(), body + 1);
        }
        body += 1;
    }
    let (inner, end) = sequence(chars, body);
    let after = (end + 1).min(chars.len());
    (if consumes { inner } else { Needs::default() }, after)
}

fn skip_class(chars: &[char], open: usize) -> usize {
    let mut i = open + 1;
    if chars.get(i) == Some(&'^') {
        i += 1;
    }
    if chars.get(i) == Some(&']') {
        i += 1;
    }
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            ']' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Whether the quantifier at `i` allows zero repetitions.
fn optional_quantifier(chars: &[char], i: usize) -> bool {
    match chars.get(i) {
        Some('?') | Some('*') => true,
        Some('{') => matches!(chars.get(i + 1), Some('0') | Some(',')),
        _ => false,
    }
}

fn skip_quantifier(chars: &[char], mut i: usize) -> usize {
    match chars.get(i) {
        Some('?') | Some('*') | Some('+') => i += 1,
        Some('{') => {
            while i < chars.len() && chars[i] != '}' {
                i += 1;
            }
            i += 1;
        }
        _ => return i,
    }
    // A lazy or possessive modifier.
    if matches!(chars.get(i), Some('?') | Some('+')) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literals(pattern: &str) -> Option<Vec<String>> {
        needs(pattern).best
    }

    #[test]
    fn the_longest_required_literal_is_chosen() {
        assert_eq!(
            literals(r"^Failed \S+ for (?P<user>.*) from (?:x)?"),
            Some(vec!["Failed".into()])
        );
        assert_eq!(
            literals(r"^[iI](?:llegal|nvalid) user (?P<u>.*?) from"),
            Some(vec!["llegal".into(), "nvalid".into()])
        );
        assert_eq!(
            literals(r"^(?P<nofail>Connection from) (?P<ip>\d+)"),
            Some(vec!["Connection from".into()])
        );
    }

    #[test]
    fn alternatives_give_a_set_and_optional_parts_are_left_out() {
        assert_eq!(
            literals(r"^(Connection (?:closed|reset)|Disconnected) by"),
            Some(vec!["Connection".into(), "Disconnected".into()])
        );
        assert_eq!(literals(r"ab?c"), Some(vec!["a".into()]));
        assert_eq!(literals(r"(?:longer literal)? x"), Some(vec!["x".into()]));
        assert_eq!(literals(r"a|\d+"), None);
        assert_eq!(literals(r"(?!not this)\w+"), None);
        assert_eq!(literals(r"ROOT\.LOGIN"), Some(vec!["ROOT.LOGIN".into()]));
        assert_eq!(
            literals(r"(?P<c>x )?(?(c)a|b) from (?<=m)(?P=c)z"),
            Some(vec!["from".into()])
        );
    }

    #[test]
    fn candidates_are_the_expressions_whose_literals_occur() {
        let prefilter = Prefilter::new(&[
            "^Failed password".to_string(),
            "^Invalid user".to_string(),
            r"\d+".to_string(),
        ]);
        assert_eq!(prefilter.candidates("Invalid user x"), vec![1, 2]);
        let literal_only = Prefilter::new(&["^Failed password".to_string()]);
        assert!(literal_only.candidates("Accepted password").is_empty());
        assert_eq!(literal_only.candidates("Failed password"), vec![0]);
        // Every literal of an expression must be in the line, not only the selective one.
        let both =
            Prefilter::new(&[r"^Received disconnect from \S+:\s*3: .*: Auth fail".to_string()]);
        assert!(both
            .candidates("Received disconnect from h:11: bye")
            .is_empty());
        assert_eq!(
            both.candidates("Received disconnect from h:3: x: Auth fail"),
            vec![0]
        );
    }
}
