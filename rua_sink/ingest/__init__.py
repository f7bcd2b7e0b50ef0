"""The use case: one message in, its reports verified and stored, one outcome out."""
