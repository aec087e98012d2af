//! Errors that point at the offending file, object and field.

use std::fmt;

/// Where a document came from: a file (or `-` for standard input) and the
/// document's position in it, counting from 1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub file: String,
    pub document: usize,
}

impl Origin {
    pub fn new(file: impl Into<String>, document: usize) -> Self {
        Origin { file: file.into(), document }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file, self.document)
    }
}

/// A manifest that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{origin}: {object}: {field}: {message}")]
pub struct ManifestError {
    pub origin: Origin,
    /// `Kind namespace/name`, or what is known of it.
    pub object: String,
    /// A path such as `spec.ports[0].targetPort`, or `-` for the document itself.
    pub field: String,
    pub message: String,
}

impl ManifestError {
    pub fn new(
        origin: &Origin,
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ManifestError {
            origin: origin.clone(),
            object: object.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Collects field errors for one object while it is checked.
pub(crate) struct Checker<'a> {
    pub origin: &'a Origin,
    pub object: String,
    pub errors: Vec<ManifestError>,
}

impl<'a> Checker<'a> {
    pub fn new(origin: &'a Origin, object: String) -> Self {
        Checker { origin, object, errors: Vec::new() }
    }

    pub fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(ManifestError::new(self.origin, self.object.clone(), field, message));
    }

    pub fn finish(self) -> Result<(), Vec<ManifestError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}
