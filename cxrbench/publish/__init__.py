"""Publishing results: model cards, leaderboard entries and rendering, submission / verify / check, result
comparison and the HTML report."""
