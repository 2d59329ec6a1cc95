//! Handshake verdicts: what a primary does with a peer after its `HelloAck`,
//! and whether a secondary accepts a primary's `Hello`. A volume's history
//! is its generation lineage; how two lineages relate decides.
//!
//! | the peer's history                          | primary does                       |
//! |---------------------------------------------|------------------------------------|
//! | none (a new, empty journal)                 | full compare (tier 3)              |
//! | the same, consistent, nothing owed          | stream from its next LSN (tier 1)  |
//! | the same, but inconsistent or regions owed  | resync those regions (tier 2)      |
//! | a prefix of ours, it holds records past our | resync: its records since the fork |
//! | fork                                        | are rolled back, ours sent         |
//! | newer than ours                             | refuse: this node is the older one |
//! | diverged after a common generation          | refuse: split brain                |
//! | newer or diverged, the peer discarding its  | resync: its records since the fork |
//! | changes (`resync --discard-local`)          | are rolled back, ours sent         |
//! | unrelated (no common generation)            | refuse (a wrong volume), unless    |
//! |                                             | our history began over unknown     |
//! |                                             | data, or an operator overwrites    |

use journal::Lsn;
use wire::{
    check_hello, compare_lineage, DataState, Hello, LineageOrder, Mismatch, RefuseCode, Role,
    SplitBrainFacts,
};

use crate::config::{InitialSync, SplitBrainPolicy};
use crate::status::DiskState;

/// Why a secondary or primary refuses.
pub(crate) fn refuse_code(m: &Mismatch) -> RefuseCode {
    match m {
        Mismatch::Version { .. } => RefuseCode::UnsupportedVersion,
        Mismatch::VolumeUuid { .. } => RefuseCode::VolumeMismatch,
        Mismatch::VolumeSize { .. } => RefuseCode::SizeMismatch,
        Mismatch::RegionSize { .. } => RefuseCode::RegionSizeMismatch,
    }
}

/// What the primary knows of the peer before deciding.
#[derive(Debug, Clone)]
pub struct PrimaryFacts<'a> {
    /// This primary's Hello.
    pub local: &'a Hello,
    /// The configured peer name, and the name its certificate carries.
    pub peer_name: &'a str,
    pub cert_name: &'a str,
    pub written_lsn: Lsn,
    /// Regions the peer's journal consumer owes it, and whether the
    /// consumer fell behind (tracked in its bitmap, not streamed).
    pub owed_regions: u64,
    pub owed_since_fall: bool,
    pub initial_sync: InitialSync,
    /// An operator asked to overwrite the peer (`resync --full`).
    pub overwrite: bool,
    /// An operator asked for a resync of what it is owed.
    pub force_resync: bool,
}

/// A resync the primary runs into the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncPlan {
    /// Every region (tier 3), not only those owed.
    pub full: bool,
    /// Compare regions before sending them (the peer may hold most).
    pub compare: bool,
    /// The peer holds records of ours from this LSN on that are not our
    /// history: it lists their ranges, which are sent from here.
    pub rollback_from: Option<Lsn>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryVerdict {
    /// The peer holds everything before `from_lsn`; stream from there.
    Stream {
        from_lsn: Lsn,
    },
    Resync(ResyncPlan),
    Refuse {
        code: RefuseCode,
        reason: String,
        /// What status says of the peer's copy.
        disk: DiskState,
    },
}

fn refuse(code: RefuseCode, reason: String, disk: DiskState) -> PrimaryVerdict {
    PrimaryVerdict::Refuse { code, reason, disk }
}

fn resync(full: bool, compare: bool, rollback_from: Option<Lsn>, reason: String) -> PrimaryVerdict {
    PrimaryVerdict::Resync(ResyncPlan {
        full,
        compare,
        rollback_from,
        reason,
    })
}

pub fn primary_verdict(f: &PrimaryFacts<'_>, remote: &Hello) -> PrimaryVerdict {
    if let Err(m) = check_hello(f.local, remote) {
        return refuse(refuse_code(&m), m.to_string(), DiskState::Unknown);
    }
    if remote.node_id != f.cert_name || remote.node_id != f.peer_name {
        return refuse(
            RefuseCode::IdentityMismatch,
            format!(
                "the peer's Hello names {:?}, its certificate {:?}, the configuration {:?}",
                remote.node_id, f.cert_name, f.peer_name
            ),
            DiskState::Unknown,
        );
    }
    if remote.role != Role::Secondary {
        return refuse(
            RefuseCode::RoleConflict,
            format!("peer {} is not a secondary", remote.node_id),
            DiskState::Unknown,
        );
    }
    if f.overwrite {
        return resync(
            true,
            true,
            None,
            "an operator asked to overwrite the peer (resync --full)".into(),
        );
    }
    if remote.lineage.is_empty() {
        return match f.initial_sync {
            InitialSync::Auto if remote.empty => resync(
                true,
                false,
                None,
                "the peer has no history and no data yet: initial sync of every region".into(),
            ),
            InitialSync::Auto => resync(
                true,
                true,
                None,
                "the peer has no history yet: initial sync, comparing every region".into(),
            ),
            InitialSync::Manual => refuse(
                RefuseCode::NotAllowed,
                "the peer has no history and initial_sync is manual: run `driftless resync VOLUME --peer NAME --full`".into(),
                DiskState::Unknown,
            ),
        };
    }
    let inconsistent = remote.data_state == DataState::Inconsistent;
    let peer = remote.durable_lsn;
    let owed = || {
        if inconsistent {
            Some("the peer's copy is inconsistent (a resync was interrupted)".to_string())
        } else if f.owed_since_fall || f.owed_regions > 0 {
            Some(format!(
                "the peer is owed {} regions (it fell behind past the journal, or a verify or an unclean restart marked them)",
                f.owed_regions
            ))
        } else if f.force_resync {
            Some("an operator asked for a resync".into())
        } else {
            None
        }
    };
    match compare_lineage(&f.local.lineage, &remote.lineage) {
        LineageOrder::Same => {
            if peer > f.written_lsn {
                resync(
                    false,
                    true,
                    Some(f.written_lsn + 1),
                    format!(
                        "the peer holds LSN {peer} but this primary's log ends at {}",
                        f.written_lsn
                    ),
                )
            } else if let Some(why) = owed() {
                resync(false, false, None, why)
            } else {
                PrimaryVerdict::Stream { from_lsn: peer + 1 }
            }
        }
        // A generation since the fork began over data of unknown history (a
        // forced promotion of an inconsistent copy): nothing the peer holds
        // can be assumed to be ours.
        LineageOrder::BIsAncestor { common_lsn, .. }
            if f
                .local
                .lineage
                .iter()
                .any(|g| g.start_lsn >= common_lsn && g.unknown_before) =>
        {
            resync(
                true,
                true,
                None,
                format!(
                    "this primary's history since LSN {common_lsn} began over data of unknown history (a forced promotion): comparing every region with the peer"
                ),
            )
        }
        LineageOrder::BIsAncestor { common_lsn, .. } => {
            if peer >= common_lsn {
                resync(
                    false,
                    true,
                    Some(common_lsn),
                    format!(
                        "the peer holds records up to LSN {peer} of an older generation, past this primary's fork at {common_lsn}: they are rolled back"
                    ),
                )
            } else if let Some(why) = owed() {
                resync(false, false, None, why)
            } else {
                PrimaryVerdict::Stream { from_lsn: peer + 1 }
            }
        }
        // The peer's operator gave its changes since the fork up
        // (`resync --discard-local`): they are rolled back, ours sent.
        LineageOrder::AIsAncestor { common_lsn, .. } | LineageOrder::Diverged { common_lsn, .. }
            if remote.discarding =>
        {
            resync(
                false,
                true,
                Some(common_lsn),
                format!(
                    "the peer gives up its changes since the fork at LSN {common_lsn} (resync --discard-local): they are rolled back"
                ),
            )
        }
        LineageOrder::AIsAncestor { common_lsn, .. } => refuse(
            RefuseCode::LineageDiverged,
            format!(
                "the peer has a newer generation (from LSN {common_lsn}) than this primary: this node would be the one to resync"
            ),
            DiskState::Unknown,
        ),
        LineageOrder::Diverged {
            common_generation,
            common_lsn,
        } => refuse(
            RefuseCode::LineageDiverged,
            format!(
                "split brain: both sides started generations after {common_generation:#x} (from LSN {common_lsn})"
            ),
            DiskState::SplitBrain,
        ),
        LineageOrder::Unrelated => {
            if f.local.lineage.first().is_some_and(|g| g.unknown_before) {
                resync(
                    true,
                    true,
                    None,
                    "this primary's history began over data of unknown history: comparing every region with the peer".into(),
                )
            } else {
                refuse(
                    RefuseCode::UnrelatedData,
                    "unrelated data: the peer holds another history of this volume (no common generation); nothing is written to it until `driftless resync VOLUME --peer NAME --full`".into(),
                    DiskState::Unknown,
                )
            }
        }
    }
}

/// The secondary's check of a primary's `Hello` (`local` is its own view,
/// `cert_name` the primary's verified certificate name).
/// With `local.discarding` (the operator gave this node's changes since
/// the fork up) a newer or diverged local history is accepted: the primary
/// rolls it back.
pub fn secondary_verdict(
    local: &Hello,
    remote: &Hello,
    cert_name: &str,
) -> Result<(), (RefuseCode, String)> {
    if remote.role != Role::Primary {
        return Err((
            RefuseCode::RoleConflict,
            format!(
                "{} connected as a secondary; only a primary ships",
                remote.node_id
            ),
        ));
    }
    check_hello(local, remote).map_err(|m| (refuse_code(&m), m.to_string()))?;
    if remote.node_id != cert_name {
        return Err((
            RefuseCode::IdentityMismatch,
            format!(
                "the Hello names {:?} but the certificate is {cert_name:?}",
                remote.node_id
            ),
        ));
    }
    if local.lineage.is_empty() || remote.overwrite {
        return Ok(());
    }
    match compare_lineage(&local.lineage, &remote.lineage) {
        LineageOrder::Same | LineageOrder::AIsAncestor { .. } => Ok(()),
        LineageOrder::BIsAncestor { .. } | LineageOrder::Diverged { .. } if local.discarding => {
            Ok(())
        }
        LineageOrder::BIsAncestor { common_lsn, .. } => Err((
            RefuseCode::LineageDiverged,
            format!("this node has a newer generation (from LSN {common_lsn}) than the primary"),
        )),
        LineageOrder::Diverged { common_lsn, .. } => Err((
            RefuseCode::LineageDiverged,
            format!("split brain: the histories diverged at LSN {common_lsn}"),
        )),
        LineageOrder::Unrelated if remote.lineage.first().is_some_and(|g| g.unknown_before) => {
            Ok(())
        }
        LineageOrder::Unrelated => Err((
            RefuseCode::UnrelatedData,
            "unrelated data: this node holds another history of the volume; it is not overwritten unless the primary's operator asks (resync --full)".into(),
        )),
    }
}

/// What a primary does when another primary's Hello reaches its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meeting {
    /// The caller's history is newer and this node has nothing the caller
    /// lacks that it may keep: step down and serve it as a secondary.
    StepDown { reason: String },
    /// Both histories were written after they forked at `fork_lsn`.
    SplitBrain { fork_lsn: Lsn },
    /// Refuse the caller (it is the one to step down, or unrelated).
    Refuse { code: RefuseCode, reason: String },
}

/// `local` is this primary's lineage and last written LSN; `fenced`: it
/// accepted no write since an unclean stop, so whatever it wrote past the
/// fork predates the other's promotion and is rolled back (an unplanned
/// failover), not a split brain.
pub fn primary_meeting(
    local: &[wire::LineageEntry],
    written_lsn: Lsn,
    fenced: bool,
    remote: &Hello,
) -> Meeting {
    let who = &remote.node_id;
    match compare_lineage(local, &remote.lineage) {
        LineageOrder::AIsAncestor { common_lsn, .. } if fenced || written_lsn < common_lsn => {
            Meeting::StepDown {
                reason: format!(
                    "{who} holds a newer generation (from LSN {common_lsn}); {}",
                    if fenced {
                        "this node accepted no write since its unclean stop: what it holds past the fork is rolled back"
                    } else {
                        "this node wrote nothing since"
                    }
                ),
            }
        }
        LineageOrder::AIsAncestor { common_lsn, .. } | LineageOrder::Diverged { common_lsn, .. } => {
            Meeting::SplitBrain {
                fork_lsn: common_lsn,
            }
        }
        // The caller is the older primary and wrote past our fork.
        // (A fenced caller accepted nothing since its unclean stop: what it
        // holds past the fork is rolled back when it steps down.)
        LineageOrder::BIsAncestor { common_lsn, .. }
            if remote.durable_lsn >= common_lsn && !remote.fenced =>
        {
            Meeting::SplitBrain {
                fork_lsn: common_lsn,
            }
        }
        LineageOrder::Same | LineageOrder::BIsAncestor { .. } => Meeting::Refuse {
            code: RefuseCode::RoleConflict,
            reason: format!(
                "this node is the primary of the same or a newer history; {who} is the one to step down (demote it)"
            ),
        },
        LineageOrder::Unrelated => Meeting::Refuse {
            code: RefuseCode::UnrelatedData,
            reason: format!("{who} is a primary of an unrelated history of this volume"),
        },
    }
}

/// Which side of a split brain gives its changes up under `policy`, from
/// both sides' facts (`None`: nothing moves). Both sides must run the same
/// policy: with different ones nothing moves. Ties move nothing.
pub fn split_brain_victim<'a>(
    policy: SplitBrainPolicy,
    local: &'a SplitBrainFacts,
    local_name: &'a str,
    remote: &'a SplitBrainFacts,
    remote_name: &'a str,
) -> Option<&'a str> {
    if SplitBrainPolicy::from_u8(remote.policy) != Some(policy) {
        return None;
    }
    let pick = |local_loses: bool, remote_loses: bool| match (local_loses, remote_loses) {
        (true, false) => Some(local_name),
        (false, true) => Some(remote_name),
        _ => None,
    };
    // u64::MAX is "unknown": never fewer, never zero.
    let (l, r) = (local.changed_regions, remote.changed_regions);
    let (ls, rs) = (local.primary_since_ns, remote.primary_since_ns);
    match policy {
        SplitBrainPolicy::Disconnect => None,
        SplitBrainPolicy::DiscardZeroChanges => pick(l == 0, r == 0),
        SplitBrainPolicy::DiscardLeastChanges => pick(l < r, r < l),
        SplitBrainPolicy::DiscardYoungerPrimary => pick(ls > rs, rs > ls),
        SplitBrainPolicy::DiscardOlderPrimary => pick(ls < rs, rs < ls),
    }
}
