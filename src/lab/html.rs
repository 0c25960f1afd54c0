//! The report page: `page.html` with the records and the summary put in as
//! one JSON object. Its script draws everything from that object, so the
//! page needs nothing from outside (no assets, no network).

use super::{IntervalRecord, Summary};

const TEMPLATE: &str = include_str!("page.html");
const SLOT: &str = "__INTXD_DATA__";

/// The page for `records` and `summary`.
pub(super) fn page(
    records: &[IntervalRecord],
    summary: &Summary,
) -> Result<String, serde_json::Error> {
    let data = serde_json::json!({ "summary": summary, "intervals": records });
    // Inside <script>, only `</` can end the element early.
    let data = serde_json::to_string(&data)?.replace("</", "<\\/");
    Ok(TEMPLATE.replacen(SLOT, &data, 1))
}
