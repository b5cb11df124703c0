//! How a transaction ends: its [`Outcome`], a [`Failure`] to show, or a
//! [`TxnError`] of slipway's own machinery.

use super::*;

/// What went wrong, for the `slipway: error: <what>: <why>` line and its
/// `hint:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub what: String,
    pub why: String,
    pub hint: String,
}

impl Failure {
    pub fn new(what: impl Into<String>, why: impl ToString, hint: impl Into<String>) -> Failure {
        Failure {
            what: what.into(),
            why: why.to_string(),
            hint: hint.into(),
        }
    }
}

/// How a transaction (or a command around one) ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub op: String,
    pub result: AttemptResult,
    /// Why it ended so: the row of the failure table (`docs/transaction.md`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    #[serde(skip)]
    pub exit: Exit,
    pub exit_code: i32,
    /// One line for the operator.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<Version>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_id: Option<ReleaseId>,
    /// The eligibility rule that said no (exit 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The swap of `current` to the new release, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_us: Option<u64>,
    /// The swap of `current` back to the old release, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flip_back_us: Option<u64>,
    pub duration_ms: u64,
    /// The step a recovered transaction was interrupted at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_at: Option<Step>,
    /// After a flip back, the old release is not healthy either: the
    /// service needs a human now.
    pub critical: bool,
    /// The persistence snapshot this transaction took (`backups/<txn>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
}

impl Outcome {
    /// An outcome with nothing but a cause (which gives the result and the
    /// exit code) and a message.
    pub fn of_cause(op: &str, cause: Cause, message: impl Into<String>) -> Outcome {
        let mut o = Outcome::new(op, cause.result(), cause.exit(), message);
        o.cause = Some(cause);
        o
    }

    pub(super) fn new(
        op: &str,
        result: AttemptResult,
        exit: Exit,
        message: impl Into<String>,
    ) -> Outcome {
        Outcome {
            op: op.to_string(),
            result,
            cause: None,
            exit,
            exit_code: exit as i32,
            message: message.into(),
            failure: None,
            from_version: None,
            version: None,
            release_id: None,
            rule: None,
            switch_us: None,
            flip_back_us: None,
            duration_ms: 0,
            interrupted_at: None,
            critical: false,
            snapshot: None,
        }
    }
}

/// A failure of slipway's own machinery (its state files, the journal, the
/// links), as opposed to a release or app failing, which ends in an
/// [`Outcome`]. The journal stays, so the next run recovers.
#[derive(Debug, Error)]
pub enum TxnError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error("{what}: {why}")]
    Host {
        what: String,
        why: String,
        hint: String,
    },
}

impl TxnError {
    pub(super) fn host(
        what: impl Into<String>,
        why: impl ToString,
        hint: impl Into<String>,
    ) -> TxnError {
        TxnError::Host {
            what: what.into(),
            why: why.to_string(),
            hint: hint.into(),
        }
    }

    /// The `hint:` line for this error.
    pub fn hint(&self) -> String {
        match self {
            TxnError::Host { hint, .. } => hint.clone(),
            _ => "fix the cause named above, then run `slipway recover` (every mutating command runs it first)".into(),
        }
    }
}

/// Options of an install or update.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// `Install` or `Update`.
    pub op: Operation,
    /// `update --auto`: every eligibility rule applies.
    pub auto: bool,
    /// `--force`: the bad list and the clean-tree rule do not apply.
    pub force: bool,
    pub allow_downgrade: bool,
}
