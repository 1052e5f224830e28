"""What a message means for the task (prefilter, rules, sender authentication, classify). Pure."""
