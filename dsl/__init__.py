"""The policy front end: text -> positioned YAML -> document model -> expression ASTs."""
