//! Cursor paging shared by the listings (`/sagas`, `/dead-letters`,
//! `/audit`): a page size from the query, and one row more than asked
//! fetched to tell whether another page exists.

use super::error::ApiError;
use super::sagas::non_empty;

/// The page size when none is asked for.
const DEFAULT_LIMIT: u32 = 50;
/// The largest page size.
const MAX_LIMIT: u32 = 500;

/// A page size from a query: 1 to 500, 50 when absent.
pub fn limit(value: Option<String>) -> Result<u32, ApiError> {
    match non_empty(value) {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "limit must be 1 to {MAX_LIMIT}, got {l:?}"
            ))),
        },
    }
}

/// `rows` fetched with `limit + 1` cut to one page, and the cursor of the
/// next page (the last row's, by `cursor`) when there is one.
pub fn page<T>(
    mut rows: Vec<T>,
    limit: u32,
    cursor: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let limit = limit as usize;
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(cursor);
        (rows, next)
    } else {
        (rows, None)
    }
}
