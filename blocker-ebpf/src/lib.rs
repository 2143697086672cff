#![no_std]
// Present so the package has a library target that blocker-user can build-depend on,
// which makes cargo rebuild the object when this crate changes.
