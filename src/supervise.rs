//! Process supervision (issue 3). Placeholder module: filled by the supervision work.
