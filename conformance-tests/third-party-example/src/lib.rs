//! Shows how a third-party backend runs the chat-state conformance suite (work in progress).
