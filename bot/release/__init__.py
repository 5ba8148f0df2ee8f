"""The release itself: model, state machine, policy, command grammar, durations. Pure: no I/O."""
