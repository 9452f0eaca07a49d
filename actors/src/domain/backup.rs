//! A tenant's backups: one aggregate per tenant (`backups.tenant`) that keeps
//! which backups exist in the object store `backups` and the tenant's limits
//! (m3saas `per_day_backups`, default 1, and `max_backups`, default 10). A
//! backup past the day's limit is refused; one past the total removes the
//! oldest in the same decision.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::aggregate::{Aggregate, Decision, DomainError};

/// The id of a tenant's one backups aggregate.
pub const BACKUPS_ID: &str = "tenant";
pub const DEFAULT_PER_DAY: u32 = 1;
pub const DEFAULT_MAX: u32 = 10;
/// The highest limits an administrator may set.
pub const MAX_PER_DAY: u32 = 100;
pub const MAX_BACKUPS: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackupTaken {
    /// The backup's id (a UUID), also its object's name in `backups`.
    pub backup_id: String,
    /// Unix seconds.
    pub at: i64,
    /// The object's size in bytes.
    pub size: u64,
    /// How many events of the tenant it holds.
    pub events: u64,
    /// The last stream sequence it includes.
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackupRemoved {
    pub backup_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackupLimitsSet {
    pub per_day: u32,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum BackupEvent {
    /// A backup of the tenant was written to the object store `backups`.
    BackupTaken(BackupTaken),
    /// A backup was removed (the oldest, past the tenant's total limit).
    BackupRemoved(BackupRemoved),
    /// A platform administrator set the tenant's backup limits.
    BackupLimitsSet(BackupLimitsSet),
}

/// One backup the tenant holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub backup_id: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupsState {
    /// Oldest first.
    pub held: Vec<Held>,
    pub per_day: u32,
    pub max: u32,
}

impl Default for BackupsState {
    fn default() -> Self {
        Self { held: Vec::new(), per_day: DEFAULT_PER_DAY, max: DEFAULT_MAX }
    }
}

impl BackupsState {
    /// How many backups were taken on the UTC day of `now` (Unix seconds).
    pub fn taken_on_day_of(&self, now: i64) -> usize {
        let day = now.div_euclid(86_400);
        self.held.iter().filter(|h| h.at.div_euclid(86_400) == day).count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupCommand {
    /// Records a backup already written (checked with `Check` before writing it).
    Take(BackupTaken),
    /// Whether a backup may be taken at `now`, without appending anything.
    Check {
        now: i64,
    },
    SetLimits {
        per_day: u32,
        max: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error("the daily backup limit is reached: {taken}")]
    DailyLimit { taken: usize },
    #[error("perDayBackups is 1 to 100 and maxBackups 1 to 1000")]
    InvalidLimits,
}

impl DomainError for BackupError {
    fn code(&self) -> &'static str {
        match self {
            BackupError::DailyLimit { .. } => "LIMIT_EXCEEDED",
            BackupError::InvalidLimits => "BAD_USER_INPUT",
        }
    }
}

pub struct Backups;

impl Aggregate for Backups {
    const NAME: &'static str = "backups";
    type State = BackupsState;
    type Command = BackupCommand;
    type Event = BackupEvent;
    type Error = BackupError;

    fn decide(state: &BackupsState, cmd: &BackupCommand) -> Result<Decision<BackupEvent>, BackupError> {
        let daily = |now: i64| {
            let taken = state.taken_on_day_of(now);
            if taken >= state.per_day as usize { Err(BackupError::DailyLimit { taken }) } else { Ok(()) }
        };
        match cmd {
            BackupCommand::Check { now } => {
                daily(*now)?;
                Ok(Decision::events(Vec::new()))
            }
            BackupCommand::Take(taken) => {
                daily(taken.at)?;
                let mut events = vec![BackupEvent::BackupTaken(taken.clone())];
                let beyond = (state.held.len() + 1).saturating_sub(state.max as usize);
                events.extend(
                    state
                        .held
                        .iter()
                        .take(beyond)
                        .map(|h| BackupEvent::BackupRemoved(BackupRemoved { backup_id: h.backup_id.clone() })),
                );
                Ok(Decision::events(events))
            }
            BackupCommand::SetLimits { per_day, max } => {
                if !(1..=MAX_PER_DAY).contains(per_day) || !(1..=MAX_BACKUPS).contains(max) {
                    return Err(BackupError::InvalidLimits);
                }
                if (*per_day, *max) == (state.per_day, state.max) {
                    return Ok(Decision::events(Vec::new()));
                }
                Ok(Decision::events(vec![BackupEvent::BackupLimitsSet(BackupLimitsSet {
                    per_day: *per_day,
                    max: *max,
                })]))
            }
        }
    }

    fn evolve(mut state: BackupsState, event: &BackupEvent) -> BackupsState {
        match event {
            BackupEvent::BackupTaken(t) => state.held.push(Held { backup_id: t.backup_id.clone(), at: t.at }),
            BackupEvent::BackupRemoved(r) => state.held.retain(|h| h.backup_id != r.backup_id),
            BackupEvent::BackupLimitsSet(l) => {
                state.per_day = l.per_day;
                state.max = l.max;
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aggregate::check;

    const DAY: i64 = 86_400;

    fn taken(id: &str, at: i64) -> BackupTaken {
        BackupTaken { backup_id: id.into(), at, size: 10, events: 3, last_seq: 7 }
    }

    fn limits(per_day: u32, max: u32) -> BackupEvent {
        BackupEvent::BackupLimitsSet(BackupLimitsSet { per_day, max })
    }

    #[test]
    fn one_backup_a_day_by_default_and_the_next_day_another() {
        let first = BackupEvent::BackupTaken(taken("a", 10 * DAY + 5));
        check::<Backups>(&[], BackupCommand::Take(taken("a", 10 * DAY + 5)), Ok(vec![first.clone()]));
        check::<Backups>(
            std::slice::from_ref(&first),
            BackupCommand::Take(taken("b", 10 * DAY + 80_000)),
            Err(BackupError::DailyLimit { taken: 1 }),
        );
        check::<Backups>(
            std::slice::from_ref(&first),
            BackupCommand::Take(taken("b", 11 * DAY)),
            Ok(vec![BackupEvent::BackupTaken(taken("b", 11 * DAY))]),
        );
    }

    #[test]
    fn past_the_total_the_oldest_goes_in_the_same_decision() {
        let given =
            [limits(5, 2), BackupEvent::BackupTaken(taken("a", DAY)), BackupEvent::BackupTaken(taken("b", DAY + 1))];
        check::<Backups>(
            &given,
            BackupCommand::Take(taken("c", DAY + 2)),
            Ok(vec![
                BackupEvent::BackupTaken(taken("c", DAY + 2)),
                BackupEvent::BackupRemoved(BackupRemoved { backup_id: "a".into() }),
            ]),
        );
    }

    #[test]
    fn limits_are_bounded_and_setting_the_same_ones_changes_nothing() {
        check::<Backups>(&[], BackupCommand::SetLimits { per_day: 0, max: 10 }, Err(BackupError::InvalidLimits));
        check::<Backups>(&[], BackupCommand::SetLimits { per_day: 1, max: 1001 }, Err(BackupError::InvalidLimits));
        check::<Backups>(&[], BackupCommand::SetLimits { per_day: 1, max: 10 }, Ok(vec![]));
        check::<Backups>(&[], BackupCommand::SetLimits { per_day: 3, max: 4 }, Ok(vec![limits(3, 4)]));
    }
}
