"""The only writer: the release service every surface calls, the controller loop, the actuator,
gates."""
