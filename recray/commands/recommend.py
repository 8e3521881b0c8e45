"""`recray recommend`: the best movies for a typed watch history.

recray recommend --run runs/NAME --history "Toy Story (1995):5, Heat (1995):4"
"""

from __future__ import annotations

from collections.abc import Sequence

from recray.commands import _serving


def main(argv: Sequence[str], command: str = "recommend") -> int:
    """Print the top `-k` movies for `--history`, with their scores."""
    parser = _serving.parser(
        command,
        "Recommend movies for a watch history, oldest first. Titles match "
        "forgivingly (case, punctuation, `Matrix, The`, a missing year).",
    )
    parser.add_argument(
        "--history",
        required=True,
        help='"Title (year):rating, ..." with ratings 0.5-5, oldest first',
    )
    parser.add_argument("-k", type=int, default=10, help="movies to list (10)")
    args = parser.parse_args(argv)

    def body() -> None:
        from recray.serving.recommend import Recommender
        from recray.serving.titles import parse_history

        history = parse_history(args.history)
        recommender = Recommender(args.run)
        found = recommender.recommend(history, args.k)
        if not found:
            print("No movie is left to recommend: the history holds them all.")
            return
        width = max(len(item.title) for item in found)
        print(f"{'movie':<{width}}  score")
        for item in found:
            print(f"{item.title:<{width}}  {item.score:.4f}")

    return _serving.run(command, args, body)
