//! chat-state: one state layer for chat bots, backends behind cargo features (work in progress).
