pub mod jobs;
pub mod sets;
