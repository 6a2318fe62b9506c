//! Participants' replies in broker mode (docs/contract.md §3), as the state
//! machine sees them: which step and attempt they answer, and how it went.

use super::Step;

/// One message on `saga-replies`, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `CreateAllianceReply` answers `create_alliance`, `DeletePartnerReply`
    /// answers `delete_partner`.
    pub step: Step,
    /// The attempt the command carried in `payload.attempt`, when the
    /// participant echoes it; without it a reply answers the current attempt.
    pub attempt: Option<u32>,
    pub status: ReplyStatus,
}

/// Where the participant is with the command.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyStatus {
    /// Received; work begins.
    Started,
    /// Still working (`payload.progress`, when given, is kept as detail).
    Progress { detail: Option<String> },
    /// Done; `payload.alliance_id` on a created alliance.
    Completed { alliance_id: Option<String> },
    /// Not done: `payload.error` says why. A business refusal unless the
    /// participant marks it `payload.retryable: true`.
    Failed { error: String, retryable: bool },
}
