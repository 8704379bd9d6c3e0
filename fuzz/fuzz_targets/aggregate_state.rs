//! The `AggregateState` decoder: any bytes decode or are refused without panicking, and
//! what decodes encodes back to bytes that decode to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_model::AggregateState;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = AggregateState::decode(data) {
        let again = AggregateState::decode(&state.encode()).expect("an encoded state decodes");
        assert_eq!(again.count, state.count);
        assert_eq!(again.measures.len(), state.measures.len());
        let _ = state.summary();
    }
});
