//! fail2ban's configuration file format: INI sections, values continued on indented lines,
//! `[INCLUDES] before/after` files (and the `.local` beside each file), and `%(name)s`
//! interpolation, including `%(section/name)s`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::FilterError;

/// Where a value was written, so an error in it can name the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Value {
    pub text: String,
    pub origin: Origin,
}

/// Reads an included file's text: from disk for a filter file, from the embedded set for a
/// built-in. `None` when it does not exist (fail2ban skips missing includes).
pub trait Source {
    fn read(&self, path: &Path) -> Result<Option<String>, FilterError>;
}

/// The files on disk.
pub struct Disk;

impl Source for Disk {
    fn read(&self, path: &Path) -> Result<Option<String>, FilterError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(FilterError::new(
                path.display().to_string(),
                None,
                err.to_string(),
            )),
        }
    }
}

/// All sections of a filter and its includes, later files overriding earlier ones.
#[derive(Debug, Default)]
pub struct Config {
    sections: HashMap<String, HashMap<String, Value>>,
}

/// The section holding overridden values, for `%(known/name)s`.
const KNOWN: &str = "known";

/// Includes deeper than this are a loop.
const MAX_INCLUDE_DEPTH: usize = 16;
/// Interpolations deeper than this are a loop (`a = %(b)s`, `b = %(a)s`).
pub const MAX_EXPANSION_DEPTH: usize = 40;

impl Config {
    /// Reads `path` with its includes: `before` files, the file, its `.local`, `after` files.
    pub fn read(source: &dyn Source, path: &Path) -> Result<Config, FilterError> {
        let mut config = Config::default();
        let text = source.read(path)?.ok_or_else(|| {
            FilterError::new(path.display().to_string(), None, "no such file".to_string())
        })?;
        config.read_with_includes(source, path, &text, 0)?;
        Ok(config)
    }

    fn read_with_includes(
        &mut self,
        source: &dyn Source,
        path: &Path,
        text: &str,
        depth: usize,
    ) -> Result<(), FilterError> {
        let file = path.display().to_string();
        if depth > MAX_INCLUDE_DEPTH {
            return Err(FilterError::new(
                file,
                None,
                "includes nest too deep (a loop?)".into(),
            ));
        }
        let parsed = parse(&file, text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let includes = |key: &str| -> Vec<PathBuf> {
            parsed
                .get("INCLUDES")
                .and_then(|section| section.get(key))
                .map(|value| {
                    value
                        .text
                        .split_whitespace()
                        .map(|name| dir.join(name))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (before, after) = (includes("before"), includes("after"));
        for include in before {
            self.read_optional(source, &include, depth + 1)?;
        }
        self.merge(parsed);
        if path.extension().is_some_and(|ext| ext == "conf") {
            self.read_optional(source, &path.with_extension("local"), depth + 1)?;
        }
        for include in after {
            self.read_optional(source, &include, depth + 1)?;
        }
        Ok(())
    }

    fn read_optional(
        &mut self,
        source: &dyn Source,
        path: &Path,
        depth: usize,
    ) -> Result<(), FilterError> {
        match source.read(path)? {
            Some(text) => self.read_with_includes(source, path, &text, depth),
            None => Ok(()),
        }
    }

    /// Adds a later file's options; a value it overrides stays readable as
    /// `%(known/name)s` (how a `.local` file extends the `.conf` one's failregex).
    fn merge(&mut self, parsed: HashMap<String, HashMap<String, Value>>) {
        for (name, options) in parsed {
            let section = self.sections.entry(name).or_default();
            let mut known = Vec::new();
            for (option, value) in options {
                if let Some(previous) = section.insert(option.clone(), value) {
                    known.push((option, previous));
                }
            }
            self.sections
                .entry(KNOWN.to_string())
                .or_default()
                .extend(known);
        }
    }

    /// Whether `section` itself (not `[DEFAULT]`) sets `option`.
    pub fn sets(&self, section: &str, option: &str) -> bool {
        self.sections
            .get(section)
            .is_some_and(|options| options.contains_key(option))
    }

    /// The raw (not interpolated) value of `option` in `section`, falling back to `[DEFAULT]`.
    pub fn raw(&self, section: &str, option: &str) -> Option<&Value> {
        self.sections
            .get(section)
            .and_then(|options| options.get(option))
            .or_else(|| {
                self.sections
                    .get("DEFAULT")
                    .and_then(|options| options.get(option))
            })
    }

    /// The value of `option` in `section` with every `%(name)s` replaced, recursively.
    pub fn get(&self, section: &str, option: &str) -> Result<Option<Value>, FilterError> {
        let Some(value) = self.raw(section, option) else {
            return Ok(None);
        };
        let text = self.interpolate(section, &value.text, &value.origin, 0)?;
        Ok(Some(Value {
            text,
            origin: value.origin.clone(),
        }))
    }

    fn interpolate(
        &self,
        section: &str,
        text: &str,
        origin: &Origin,
        depth: usize,
    ) -> Result<String, FilterError> {
        if !text.contains('%') {
            return Ok(text.to_string());
        }
        if depth > MAX_EXPANSION_DEPTH {
            return Err(origin.error("%(...)s interpolation nests too deep (a loop?)"));
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("%%") {
                out.push('%');
                rest = after;
                continue;
            }
            let Some(name_end) = rest.find(")s").filter(|_| rest.starts_with("%(")) else {
                return Err(origin.error(&format!(
                    "bad interpolation {:?}: use %(name)s or %% for a literal %",
                    rest.chars().take(20).collect::<String>()
                )));
            };
            let name = &rest[2..name_end];
            // The value and the section its own references are read in: a `known/` value
            // was written in this section.
            let (target_section, target_option, context) = match name.split_once('/') {
                Some((KNOWN, option)) => (KNOWN, option, section),
                Some((other, option)) => (other, option, other),
                None => (section, name, section),
            };
            let value = self.raw(target_section, target_option).ok_or_else(|| {
                origin.error(&format!("%({name})s: no option {name:?} is defined"))
            })?;
            out.push_str(&self.interpolate(context, &value.text, origin, depth + 1)?);
            rest = &rest[name_end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

impl Origin {
    pub fn error(&self, reason: &str) -> FilterError {
        FilterError::new(self.file.clone(), Some(self.line), reason.to_string())
    }
}

/// One file's sections. A line starting with whitespace continues the previous value (a
/// multi-line `failregex`); `#` and `;` start comment lines.
fn parse(file: &str, text: &str) -> Result<HashMap<String, HashMap<String, Value>>, FilterError> {
    let mut sections: HashMap<String, HashMap<String, Value>> = HashMap::new();
    let mut section: Option<String> = None;
    let mut last_option: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let error =
            |reason: &str| FilterError::new(file.to_string(), Some(line_number), reason.into());
        if line.starts_with([' ', '\t']) {
            let (Some(section), Some(option)) = (&section, &last_option) else {
                return Err(error("an indented line continues no option"));
            };
            if let Some(value) = sections.get_mut(section).and_then(|s| s.get_mut(option)) {
                if !value.text.is_empty() {
                    value.text.push('\n');
                }
                value.text.push_str(trimmed);
            }
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| error("a section header must end with ]"))?;
            sections.entry(name.to_string()).or_default();
            section = Some(name.to_string());
            last_option = None;
            continue;
        }
        let Some(separator) = trimmed.find(['=', ':']) else {
            return Err(error("expected `name = value`, a [section] or a comment"));
        };
        let Some(current) = &section else {
            return Err(error("an option before any [section]"));
        };
        let name = trimmed[..separator].trim().to_string();
        let value = Value {
            text: trimmed[separator + 1..].trim().to_string(),
            origin: Origin {
                file: file.to_string(),
                line: line_number,
            },
        };
        sections
            .entry(current.clone())
            .or_default()
            .insert(name.clone(), value);
        last_option = Some(name);
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files(Vec<(&'static str, &'static str)>);

    impl Source for Files {
        fn read(&self, path: &Path) -> Result<Option<String>, FilterError> {
            Ok(self
                .0
                .iter()
                .find(|(name, _)| Path::new(name) == path)
                .map(|(_, text)| text.to_string()))
        }
    }

    #[test]
    fn includes_defaults_and_interpolation_combine() {
        let files = Files(vec![
            ("/f/common.conf", "[DEFAULT]\n_daemon = \\S*\nprefix = ^%(_daemon)s:\n"),
            (
                "/f/x.conf",
                "[INCLUDES]\nbefore = common.conf\n[DEFAULT]\n_daemon = xd\n[Definition]\n\
                 failregex = %(prefix)s one\n    %(prefix)s two\n# comment\nother = %(lt/v)s 100%%\n[lt]\nv = sec\n",
            ),
            (
                "/f/x.local",
                "[Definition]\nextra = local\nfailregex = %(known/failregex)s\n  ^three\n",
            ),
        ]);
        let config = Config::read(&files, Path::new("/f/x.conf")).unwrap();
        let failregex = config.get("Definition", "failregex").unwrap().unwrap();
        assert_eq!(failregex.text, "^xd: one\n^xd: two\n^three");
        assert_eq!(failregex.origin.line, 3);
        assert_eq!(
            config.get("Definition", "other").unwrap().unwrap().text,
            "sec 100%"
        );
        assert_eq!(
            config.get("Definition", "extra").unwrap().unwrap().text,
            "local"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let files = Files(vec![(
            "/f/x.conf",
            "[Definition]\nfailregex = %(missing)s\n",
        )]);
        let config = Config::read(&files, Path::new("/f/x.conf")).unwrap();
        let err = config.get("Definition", "failregex").unwrap_err();
        assert_eq!(
            err.to_string(),
            "filter /f/x.conf line 2: %(missing)s: no option \"missing\" is defined"
        );
        let files = Files(vec![("/f/y.conf", "[Definition]\nthis line is junk\n")]);
        let err = Config::read(&files, Path::new("/f/y.conf")).unwrap_err();
        assert!(
            err.to_string().starts_with("filter /f/y.conf line 2: "),
            "{err}"
        );
    }

    #[test]
    fn an_interpolation_loop_is_an_error() {
        let files = Files(vec![("/f/x.conf", "[Definition]\na = %(b)s\nb = %(a)s\n")]);
        let config = Config::read(&files, Path::new("/f/x.conf")).unwrap();
        assert!(config.get("Definition", "a").is_err());
    }
}
