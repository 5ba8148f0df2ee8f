"""Nothing in this folder is a test: the evaluation calls a real model and is run by hand
(``python -m tests.llm_eval.run_eval``). Files are named so pytest would not collect them;
this keeps it that way should one ever be named like a test."""

collect_ignore_glob = ["*"]
