//! The fast path: for each failregex, a set of literal strings one of which every line it
//! matches must contain. One Aho-Corasick pass over a line tells which expressions can match
//! it at all; most lines of a log contain none and never reach the regex engine.

use aho_corasick::AhoCorasick;

/// Which expressions a line can match: those whose required literal it contains, and those
/// with no required literal (always tried).
#[derive(Debug)]
pub struct Prefilter {
    automaton: Option<AhoCorasick>,
    /// Pattern id of the automaton → index of its expression.
    pattern_owner: Vec<usize>,
    always: Vec<usize>,
    count: usize,
}

impl Prefilter {
    /// `patterns` are the expanded failregexes, in order.
    pub fn new(patterns: &[String]) -> Prefilter {
        let mut literals = Vec::new();
        let mut pattern_owner = Vec::new();
        let mut always = Vec::new();
        let mut case_insensitive = false;
        for (index, pattern) in patterns.iter().enumerate() {
            match required_literals(pattern) {
                Some(set) => {
                    case_insensitive |= pattern.contains("(?i");
                    for literal in set {
                        literals.push(literal);
                        pattern_owner.push(index);
                    }
                }
                None => always.push(index),
            }
        }
        let automaton = if literals.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .ascii_case_insensitive(case_insensitive)
                .build(&literals)
                .ok()
        };
        if automaton.is_none() {
            always = (0..patterns.len()).collect();
        }
        Prefilter {
            automaton,
            pattern_owner,
            always,
            count: patterns.len(),
        }
    }

    /// The expressions to try on `line`, in their order; empty for most lines.
    pub fn candidates(&self, line: &str) -> Vec<usize> {
        if let Some(automaton) = &self.automaton {
            if self.always.is_empty() && !automaton.is_match(line) {
                return Vec::new();
            }
        }
        let mut hit = vec![false; self.count];
        if let Some(automaton) = &self.automaton {
            for found in automaton.find_overlapping_iter(line) {
                hit[self.pattern_owner[found.pattern().as_usize()]] = true;
            }
        }
        for &index in &self.always {
            hit[index] = true;
        }
        hit.iter()
            .enumerate()
            .filter_map(|(index, &hit)| hit.then_some(index))
            .collect()
    }
}

/// Literals of which a match of `pattern` contains at least one, or None when no such set
/// was found (alternation without literals in a branch, verbose mode...).
pub fn required_literals(pattern: &str) -> Option<Vec<String>> {
    if pattern.contains("(?x") {
        return None;
    }
    let chars: Vec<char> = pattern.chars().collect();
    let (requirement, _) = sequence(&chars, 0);
    requirement.filter(|set| set.iter().all(|literal| !literal.is_empty()))
}

type Requirement = Option<Vec<String>>;

/// How selective a requirement is: its shortest literal's length (longer is rarer).
fn score(requirement: &Requirement) -> usize {
    requirement
        .as_ref()
        .and_then(|set| set.iter().map(|literal| literal.chars().count()).min())
        .unwrap_or(0)
}

fn better(a: Requirement, b: Requirement) -> Requirement {
    if score(&b) > score(&a) {
        b
    } else {
        a
    }
}

/// Parses alternatives from `start` up to an unmatched `)` or the end; returns the best
/// requirement and where it stopped.
fn sequence(chars: &[char], start: usize) -> (Requirement, usize) {
    let mut branches: Vec<Requirement> = Vec::new();
    let mut best: Requirement = None;
    let mut run = String::new();
    let mut i = start;
    let flush = |run: &mut String, best: &mut Requirement| {
        if !run.is_empty() {
            *best = better(best.take(), Some(vec![std::mem::take(run)]));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ')' => break,
            '|' => {
                flush(&mut run, &mut best);
                branches.push(best.take());
                i += 1;
            }
            '(' => {
                flush(&mut run, &mut best);
                let (inner, end) = group(chars, i);
                i = end;
                if !optional_quantifier(chars, i) {
                    best = better(best.take(), inner);
                }
                i = skip_quantifier(chars, i);
            }
            '[' => {
                flush(&mut run, &mut best);
                i = skip_class(chars, i);
                i = skip_quantifier(chars, i);
            }
            '\\' => {
                let escaped = chars.get(i + 1).copied();
                i += 2;
                match escaped {
                    Some(e) if e.is_ascii_punctuation() || e == ' ' => {
                        literal_char(chars, &mut i, e, &mut run, &mut best)
                    }
                    _ => {
                        flush(&mut run, &mut best);
                        i = skip_quantifier(chars, i);
                    }
                }
            }
            '.' | '^' | '$' | '*' | '+' | '?' | '{' => {
                flush(&mut run, &mut best);
                i = skip_quantifier(chars, i + 1);
            }
            _ => {
                i += 1;
                literal_char(chars, &mut i, c, &mut run, &mut best);
            }
        }
    }
    flush(&mut run, &mut best);
    if branches.is_empty() {
        return (best, i);
    }
    branches.push(best);
    let mut union = Some(Vec::new());
    for branch in branches {
        match (branch.filter(|set| !set.is_empty()), union.as_mut()) {
            (Some(set), Some(all)) => all.extend(set),
            _ => union = None,
        }
    }
    (union, i)
}

/// A literal character at `i - 1`: part of the run unless a quantifier makes it optional.
fn literal_char(chars: &[char], i: &mut usize, c: char, run: &mut String, best: &mut Requirement) {
    if optional_quantifier(chars, *i) {
        if !run.is_empty() {
            *best = better(best.take(), Some(vec![std::mem::take(run)]));
        }
        *i = skip_quantifier(chars, *i);
        return;
    }
    run.push(c);
    if matches!(chars.get(*i), Some('+') | Some('{')) {
        *best = better(best.take(), Some(vec![std::mem::take(run)]));
        *i = skip_quantifier(chars, *i);
    }
}

/// The requirement inside the group opening at `open`, and the index after its `)`.
fn group(chars: &[char], open: usize) -> (Requirement, usize) {
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
            return (None, body + 1);
        }
        body += 1;
    }
    let (inner, end) = sequence(chars, body);
    let after = (end + 1).min(chars.len());
    (if consumes { inner } else { None }, after)
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
        required_literals(pattern)
    }

    #[test]
    fn the_longest_required_literal_is_chosen() {
        assert_eq!(
            literals(r"^Failed \S+ for (?P<user>.*) from (?:x)?"),
            Some(vec!["Failed ".into()])
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
            Some(vec!["Connection ".into(), "Disconnected".into()])
        );
        assert_eq!(literals(r"ab?c"), Some(vec!["a".into()]));
        assert_eq!(literals(r"(?:longer literal)? x"), Some(vec![" x".into()]));
        assert_eq!(literals(r"a|\d+"), None);
        assert_eq!(literals(r"(?!not this)\w+"), None);
        assert_eq!(literals(r"ROOT\.LOGIN"), Some(vec!["ROOT.LOGIN".into()]));
        assert_eq!(
            literals(r"(?P<c>x )?(?(c)a|b) from (?<=m)(?P=c)z"),
            Some(vec![" from ".into()])
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
    }
}
