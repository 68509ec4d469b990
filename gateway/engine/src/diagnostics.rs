//! Source text of a TOML file, kept so every error can name file, line, column and field.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Where in which file a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based; `None` when the field is absent from the file (e.g. a required key is missing).
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(col)) => write!(f, "{}:{line}:{col}", self.file.display()),
            _ => write!(f, "{}", self.file.display()),
        }
    }
}

/// One problem in a configuration-like file: the file/line/column, the field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {field}: {message}")]
pub struct SourceIssue {
    pub location: Location,
    /// Dotted field path, e.g. `upstream.pool[0].peers[1]`; empty for whole-file problems.
    pub field: String,
    pub message: String,
}

/// All problems found in one load, reported together so a user fixes them in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIssues(pub Vec<SourceIssue>);

impl fmt::Display for SourceIssues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SourceIssues {}

impl SourceIssues {
    /// Problems of a file or directory as a whole (it cannot be read, or lacks something: no
    /// field, no line in it) are reported on `field` of `source`, the setting that names it,
    /// with its path in the message: every problem then says where to change something.
    pub fn or_on_field(self, source: &SourceText, field: &str) -> SourceIssues {
        SourceIssues(
            self.0
                .into_iter()
                .map(|issue| {
                    if issue.field.is_empty() && issue.location.line.is_none() {
                        let path = issue.location.file.display();
                        source.issue(field, format!("{path}: {}", issue.message))
                    } else {
                        issue
                    }
                })
                .collect(),
        )
    }
}

impl From<SourceIssue> for SourceIssues {
    fn from(issue: SourceIssue) -> Self {
        SourceIssues(vec![issue])
    }
}

/// The text of one TOML file plus its path.
#[derive(Debug, Clone)]
pub struct SourceText {
    pub path: PathBuf,
    pub text: String,
}

impl SourceText {
    pub fn read(path: &Path) -> Result<Self, SourceIssue> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(SourceText {
                path: path.to_path_buf(),
                text,
            }),
            Err(e) => Err(SourceIssue {
                location: Location {
                    file: path.to_path_buf(),
                    line: None,
                    column: None,
                },
                field: String::new(),
                message: format!("cannot read file: {e}"),
            }),
        }
    }

    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        SourceText {
            path: path.into(),
            text: text.into(),
        }
    }

    /// The directory the file's relative paths start from (`.` for a bare file name).
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// A path written in the file, made absolute against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir().join(path)
        }
    }

    /// Deserialize the whole file into `T`, reporting the failing field path and its position.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, SourceIssue> {
        let deserializer = match toml::Deserializer::parse(&self.text) {
            Ok(d) => d,
            Err(e) => return Err(self.toml_error(String::new(), &e)),
        };
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            self.toml_error(field, e.inner())
        })
    }

    fn toml_error(&self, field: String, e: &toml::de::Error) -> SourceIssue {
        let location = match e.span() {
            Some(span) => self.location_of(span.start),
            // serde errors for missing keys carry no span: point at the enclosing table if we can.
            None => self
                .span_of(parent_field(&field))
                .map(|s| self.location_of(s.start))
                .unwrap_or_else(|| self.file_location()),
        };
        SourceIssue {
            location,
            field,
            message: e.message().trim().to_string(),
        }
    }

    /// An issue found by semantic validation after deserialization, located by its field path.
    pub fn issue(&self, field: impl Into<String>, message: impl Into<String>) -> SourceIssue {
        let field = field.into();
        let location = self
            .span_of(&field)
            .map(|s| self.location_of(s.start))
            .unwrap_or_else(|| self.file_location());
        SourceIssue {
            location,
            field,
            message: message.into(),
        }
    }

    fn file_location(&self) -> Location {
        Location {
            file: self.path.clone(),
            line: None,
            column: None,
        }
    }

    pub fn location_of(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        Location {
            file: self.path.clone(),
            line: Some(line),
            column: Some(column),
        }
    }

    /// Byte range of the value at `field` (`a.b[2].c`), if it is present in the file.
    pub fn span_of(&self, field: &str) -> Option<Range<usize>> {
        let root = DeTable::parse(&self.text).ok()?;
        let mut segments = parse_field_path(field)?.into_iter();
        let Some(first) = segments.next() else {
            return Some(root.span());
        };
        let PathSegment::Key(first_key) = first else {
            return None;
        };
        let mut current: &Spanned<DeValue<'_>> = table_get(root.get_ref(), &first_key)?;
        for segment in segments {
            current = match (segment, current.get_ref()) {
                (PathSegment::Key(k), DeValue::Table(t)) => table_get(t, &k)?,
                (PathSegment::Index(i), DeValue::Array(a)) => a.get(i)?,
                _ => return None,
            };
        }
        Some(current.span())
    }
}

fn table_get<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

#[derive(Debug, PartialEq, Eq)]
enum PathSegment {
    Key(String),
    Index(usize),
}

/// Parses `a.b[2].c` into segments. Returns `None` for paths it cannot read.
fn parse_field_path(field: &str) -> Option<Vec<PathSegment>> {
    let mut out = Vec::new();
    if field.is_empty() {
        return Some(out);
    }
    for part in field.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(PathSegment::Key(key.to_string()));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']')?;
            out.push(PathSegment::Index(stripped[..end].parse().ok()?));
            rest = &stripped[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

fn parent_field(field: &str) -> &str {
    match field.rfind(['.', '[']) {
        Some(i) => &field[..i],
        None => "",
    }
}

/// An error with its causes: libraries (reqwest, tokio-postgres, Cedar) put what went wrong in
/// the causes ("error sending request", "db error" on top).
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[server]\nlisten = [\"a\", \"b\"]\n\n[[upstream.pool]]\nname = \"x\"\npeers = [\"1\", \"2\"]\n";

    #[test]
    fn locates_nested_fields_and_array_items() {
        let src = SourceText::new("g.toml", DOC);
        let loc = src.location_of(src.span_of("server.listen[1]").unwrap().start);
        assert_eq!((loc.line, loc.column), (Some(2), Some(16)));
        let loc = src.location_of(src.span_of("upstream.pool[0].peers[1]").unwrap().start);
        assert_eq!((loc.line, loc.column), (Some(6), Some(15)));
        assert!(src.span_of("upstream.pool[3]").is_none());
        assert!(src.span_of("nope").is_none());
    }

    #[test]
    fn parse_errors_name_line_and_column() {
        let src = SourceText::new("bad.toml", "[server]\nlisten = [\"a\"\nthreads = 2\n");
        let err = src.deserialize::<toml::Table>().unwrap_err();
        assert_eq!(err.location.file, PathBuf::from("bad.toml"));
        assert!(err.location.line.is_some());
        assert!(err.to_string().starts_with("bad.toml:"), "{err}");
    }

    #[test]
    fn type_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Doc {
            server: Server,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Server {
            threads: u32,
        }
        let src = SourceText::new("t.toml", "[server]\nthreads = \"two\"\n");
        let err = src.deserialize::<Doc>().unwrap_err();
        assert_eq!(err.field, "server.threads");
        assert_eq!(err.location.line, Some(2));
    }

    #[test]
    fn field_paths_parse() {
        assert_eq!(
            parse_field_path("a.b[2].c").unwrap(),
            vec![
                PathSegment::Key("a".into()),
                PathSegment::Key("b".into()),
                PathSegment::Index(2),
                PathSegment::Key("c".into())
            ]
        );
        assert!(parse_field_path("a[x]").is_none());
        assert_eq!(parent_field("a.b[2]"), "a.b");
        assert_eq!(parent_field("a"), "");
    }
}
