"""`recray similar`: the movies closest to one by their text embeddings.

recray similar --run runs/NAME "Toy Story (1995)" -k 10
"""

from __future__ import annotations

from collections.abc import Sequence

from recray.commands import _serving


def main(argv: Sequence[str], command: str = "similar") -> int:
    """Print the `-k` nearest movies and their cosine distances."""
    parser = _serving.parser(
        command, "List the movies closest to TITLE by cosine distance of text."
    )
    parser.add_argument("title", help='a movie of the run, e.g. "Toy Story (1995)"')
    parser.add_argument("-k", type=int, default=10, help="movies to list (10)")
    args = parser.parse_args(argv)

    def body() -> None:
        from recray.serving.catalogue import ServingPaths, load_catalogue
        from recray.serving.similar import cosine_neighbours

        if args.k < 1:
            raise ValueError(f"`-k` must be at least 1, got {args.k}.")
        catalogue = load_catalogue(ServingPaths(args.run))
        row = catalogue.matcher().row(args.title)
        rows, distances = cosine_neighbours(catalogue.vectors, row, args.k)
        titles = [catalogue.titles[r] for r in rows]
        width = max([len(t) for t in titles] + [5])
        print(f"Nearest to {catalogue.titles[row]}:")
        print(f"{'movie':<{width}}  distance")
        for title, distance in zip(titles, distances, strict=True):
            print(f"{title:<{width}}  {distance:.4f}")

    return _serving.run(command, args, body)
