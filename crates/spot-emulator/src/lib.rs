//! The spot emulator: the device side. PLACEHOLDER: being written.
