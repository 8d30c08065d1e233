"""Release: the Hub-ready export (merged weights, remote code, model card) and the upload (`rrg push`)."""
