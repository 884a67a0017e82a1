"""Battleship with hidden boards: the enclave is the referee that sees both boards.

Two players place their fleets privately (sealed inputs) and take turns firing; the contract
answers miss, hit or sunk. A board stays readable only by its owner until the game ends.
At placement the contract publishes a commitment to each board,
`SHA-256(salt + ":" + board_text(ships))` with a salt the player chose, so after the game,
when both boards are revealed, either player can check that the board it played against is
the one committed at the start. An optional stake, paid by both with `value=` at placement,
goes to the winner through `ctx.transfer`.
"""

import hashlib

from umbra.contract import Contract, command, query

ROWS = "ABCDE"
COLUMNS = "12345"
FLEET = (3, 2)  # ship lengths
MIN_SALT = 16  # a board has few layouts: the salt is what keeps its commitment from being guessed


def cell_of(text):
    text = str(text).upper()
    if len(text) != 2 or text[0] not in ROWS or text[1] not in COLUMNS:
        raise ValueError(f"{text!r} is not a cell: a row {ROWS[0]}-{ROWS[-1]} and a column 1-{COLUMNS[-1]}")
    return text


def board_text(ships):
    """The canonical form of a fleet: ships' cells sorted, ships sorted, as 'A1,A2,A3;C5,D5'."""
    return ";".join(",".join(ship) for ship in ships)


def fleet_of(ships):
    """Check a fleet against the rules and return it in canonical order."""
    if not isinstance(ships, list) or sorted(len(s) if isinstance(s, list) else 0 for s in ships) != sorted(
        FLEET
    ):
        raise ValueError(f"the fleet is one ship of each length {FLEET}")
    fleet, seen = [], set()
    for ship in ships:
        cells = sorted({cell_of(c) for c in ship})
        rows, columns = {c[0] for c in cells}, {c[1] for c in cells}
        line = COLUMNS if len(rows) == 1 else ROWS
        span = "".join(sorted(columns if len(rows) == 1 else rows, key=line.index))
        if len(cells) != len(ship) or (len(rows) > 1 and len(columns) > 1) or span not in line:
            raise ValueError(f"ship {ship} is not a straight line of adjacent cells")
        if seen & set(cells):
            raise ValueError("ships may not overlap")
        seen |= set(cells)
        fleet.append(cells)
    return sorted(fleet)


def commitment(ships, salt):
    return "0x" + hashlib.sha256(f"{salt}:{board_text(ships)}".encode()).hexdigest()


class Battleship(Contract):
    def init(self, ctx, opponent, stake=0):
        if opponent == ctx.caller or not isinstance(stake, int) or stake < 0:
            raise ValueError("play against another account, for a stake >= 0")
        self.state["players"] = [ctx.caller, opponent]
        self.state["stake"] = stake
        self.state["boards"] = {}  # player -> {ships, salt, commitment, hits}
        self.state["shots"] = []  # public: [{player, cell, result}]
        self.state["turn"] = None
        self.state["winner"] = None

    def _player(self, ctx):
        if ctx.caller not in self.state["players"]:
            raise PermissionError("only the two players may play")
        return ctx.caller

    def _opponent(self, player):
        first, second = self.state["players"]
        return second if player == first else first

    @command
    def place(self, ctx, ships, salt):
        player = self._player(ctx)
        if player in self.state["boards"]:
            raise ValueError("your board is already placed")
        if ctx.value != self.state["stake"]:
            raise ValueError(f"the stake is exactly {self.state['stake']}: send it as value")
        if not isinstance(salt, str) or len(salt) < MIN_SALT:
            raise ValueError(f"the salt is a string of at least {MIN_SALT} characters")
        fleet = fleet_of(ships)
        digest = commitment(fleet, salt)
        self.state["boards"][player] = {"ships": fleet, "salt": salt, "commitment": digest, "hits": []}
        ctx.emit("BoardCommitted", player=player, commitment=digest)
        if len(self.state["boards"]) == 2:
            self.state["turn"] = self.state["players"][0]
        return {"commitment": digest}

    @command
    def fire(self, ctx, cell):
        player = self._player(ctx)
        if self.state["winner"] is not None:
            raise ValueError("the game is over")
        if self.state["turn"] is None:
            raise ValueError("both boards must be placed first")
        if self.state["turn"] != player:
            raise ValueError("it is not your turn")
        cell = cell_of(cell)
        if any(s["player"] == player and s["cell"] == cell for s in self.state["shots"]):
            raise ValueError(f"you already fired at {cell}")
        target = self.state["boards"][self._opponent(player)]
        ship = next((s for s in target["ships"] if cell in s), None)
        result = "miss"
        if ship is not None:
            target["hits"].append(cell)
            result = "sunk" if all(c in target["hits"] for c in ship) else "hit"
        self.state["shots"].append({"player": player, "cell": cell, "result": result})
        ctx.emit("Shot", player=player, cell=cell, result=result)
        if all(c in target["hits"] for s in target["ships"] for c in s):
            self.state["winner"] = player
            self.state["turn"] = None
            if self.state["stake"]:
                ctx.transfer(player, 2 * self.state["stake"])
        else:
            self.state["turn"] = self._opponent(player)
        return {"cell": cell, "result": result, "winner": self.state["winner"]}

    @query
    def status(self, ctx):
        """What everyone may know: the moves and their results, whose turn, the commitments."""
        return {
            "players": self.state["players"],
            "stake": self.state["stake"],
            "commitments": {p: b["commitment"] for p, b in self.state["boards"].items()},
            "shots": self.state["shots"],
            "turn": self.state["turn"],
            "winner": self.state["winner"],
        }

    @query
    def board(self, ctx, player=None):
        """A board: your own at any time, anyone's once the game is over."""
        player = player or ctx.caller
        if player != ctx.caller and self.state["winner"] is None:
            raise PermissionError("a player's board stays hidden until the game ends")
        found = self.state["boards"].get(player)
        if found is None:
            raise KeyError("no board placed by that account")
        return {k: found[k] for k in ("ships", "salt", "commitment")}
