//! dmcache-vmtest: run dm-cache cases on real kernels in real VMs.
//!
//! Data flow: `case` (YAML model) → `kernel` (resolve/fetch/build) → `vm` (one vng
//! process per boot, guest script from `guest`) → `console` scan → `replay` (the host's
//! reading of the guest's records) → `check` (assertions, classification, verdict) → `report`.  `run` orchestrates one case.

pub mod bench;
pub mod bisect;
pub mod cache;
pub mod case;
pub mod check;
pub mod console;
pub mod cores;
pub mod crashpoints;
pub mod debian;
pub mod doctor;
pub mod event;
pub mod guest;
pub mod image;
pub mod interrupt;
pub mod kbuild;
pub mod kernel;
pub mod logwrites;
pub mod matrix;
pub mod proc;
pub mod replay;
pub mod report;
pub mod review;
pub mod run;
pub mod vm;
pub mod yaml;
