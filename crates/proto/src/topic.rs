//! Topic names and topic filters: validation and shared-subscription parsing. (Filled in by the
//! topic work: see TopicError and the functions below.)
