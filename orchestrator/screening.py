"""Sanctions screening of debtor and creditor names against the tenant's watchlist.

Both sides are normalised the same way (case, accents, punctuation, legal forms), then
scored with two order-independent rapidfuzz measures averaged:

* `token_sort_ratio` compares the whole names with words sorted. It tolerates typos,
  spelling variants ("Harbour"/"Harbor") and reordering, but marks a name that is only
  part of a listed one down in proportion to what is missing.
* `token_set_ratio` scores 100 whenever one name's words are a subset of the other's.
  That catches a listed name with a word dropped, but on its own it would flag every
  "Shipping Ltd" against "Crimson Harbor Shipping Ltd".

The average keeps the subset signal while a lone common word cannot reach the review band
("Herrera" alone against "Mateo Quintana Herrera" scores about 74, "Mateo Herrera" 87).
POSSIBLE_MATCH at or above the tenant's review_score. HIT at or above block_score, and
only if the token-sort score alone also reaches block_score: a HIT blocks without a
person looking, so a partial name ("Brandt Holdings" for "Olek Brandt Holdings GmbH",
blended 93) is held for review instead.

Names of non-Latin scripts are compared as written; transliteration is not done here.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from rapidfuzz import fuzz, process

from orchestrator.domain import Payment
from orchestrator.reasons import ReasonCode
from orchestrator.tenants import SanctionsConfig

Outcome = Literal["CLEAR", "POSSIBLE_MATCH", "HIT"]
PartyRole = Literal["debtor", "creditor"]

# Legal-form words carry no identity: "Crimson Harbor Shipping Ltd" and "CRIMSON HARBOUR
# SHIPPING LIMITED" are the same company. Dotted forms ("S.A.", "Co.") arrive here already
# joined ("sa", "co") because periods are removed rather than turned into spaces.
LEGAL_FORM_TOKENS = frozenset(
    {
        "ab", "ag", "as", "bhd", "bv", "co", "company", "corp", "corporation", "cv", "gmbh",
        "inc", "incorporated", "kg", "kk", "limited", "llc", "llp", "lp", "ltd", "ltda",
        "nv", "oy", "plc", "pte", "pty", "sa", "sab", "sarl", "sas", "sdn", "spa", "srl",
    }
)  # fmt: skip

# Below this many characters a normalised name is compared only for equality: fuzzy
# ratios between two- or three-letter strings are noise ("li" vs "lin" is 80).
MIN_FUZZY_NAME_CHARS = 4

# Distinct party names whose score is kept per watchlist (payroll and suppliers repeat).
_NAME_CACHE_ENTRIES = 65_536

# Characters removed outright instead of becoming a word break, so that abbreviations and
# elisions stay one word: "S.A." -> "sa", "O'Brien" -> "obrien".
_JOINING_PUNCTUATION = frozenset(".'’`´")
# Latin letters that NFKD does not decompose into a base letter plus a mark.
_EXTRA_FOLDS = {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "æ": "ae", "œ": "oe", "ı": "i"}


@dataclass(frozen=True, slots=True)
class SanctionsVerdict:
    outcome: Outcome
    # Blended score 0..100 of the best candidate, kept on CLEAR too for tuning the bands;
    # 0.0 when no entry came near enough to be scored in full (see Watchlist._score_name).
    best_score: float
    matched_list: str | None = None
    matched_entry_id: str | None = None
    matched_party: PartyRole | None = None

    @property
    def reason_code(self) -> ReasonCode | None:
        if self.outcome == "HIT":
            return ReasonCode.sanctions_match
        if self.outcome == "POSSIBLE_MATCH":
            return ReasonCode.sanctions_possible_match
        return None


_OUTCOME_RANK: dict[Outcome, int] = {"CLEAR": 0, "POSSIBLE_MATCH": 1, "HIT": 2}


@dataclass(frozen=True, slots=True)
class NameMatch:
    """The best watchlist entry for one party name."""

    outcome: Outcome
    score: float
    entry_index: int

    def beats(self, other: "NameMatch | None") -> bool:
        # A stronger outcome wins over a higher score: a HIT on one entry must not be
        # hidden behind a subset-only match that happens to score higher on another.
        if other is None:
            return True
        return (_OUTCOME_RANK[self.outcome], self.score) > (_OUTCOME_RANK[other.outcome], other.score)


def normalise_name(name: str) -> str:
    """Casefold, strip accents, punctuation to spaces, drop legal forms, collapse spaces.

    If a name consists only of legal-form words ("Company Limited") they are kept, so that
    it still has something to be compared by.
    """
    chars: list[str] = []
    for ch in unicodedata.normalize("NFKD", name.casefold()):
        if ch in _JOINING_PUNCTUATION:
            continue
        if ch.isalnum():
            chars.append(_EXTRA_FOLDS.get(ch, ch))
        elif unicodedata.category(ch) in ("Mn", "Mc", "Me", "Cf"):
            # Combining accents, and zero-width characters that would split a word.
            continue
        else:
            chars.append(" ")
    tokens = "".join(chars).split()
    kept = [token for token in tokens if token not in LEGAL_FORM_TOKENS]
    return " ".join(kept or tokens)


def _sorted_words(name: str) -> str:
    return " ".join(sorted(name.split()))


class Watchlist:
    """One tenant's sanctions list, normalised once, with its review and block bands."""

    def __init__(self, config: SanctionsConfig) -> None:
        self.block_score = float(config.block_score)
        self.review_score = float(config.review_score)
        self._entries = config.watchlist
        normalised = [normalise_name(entry.name) for entry in config.watchlist]
        # Indices of entries long enough for fuzzy comparison, and their names in the same
        # order, as rapidfuzz wants a plain sequence of choices.
        self._fuzzy_indices = [i for i, name in enumerate(normalised) if len(name) >= MIN_FUZZY_NAME_CHARS]
        self._fuzzy_names = [normalised[i] for i in self._fuzzy_indices]
        # token_sort_ratio(a, b) is exactly ratio() of the names with their words sorted.
        # Sorting the list's words once here lets the prefilter run plain ratio(), which
        # rapidfuzz evaluates several times faster than re-sorting every entry per query.
        self._fuzzy_sorted_names = [_sorted_words(name) for name in self._fuzzy_names]
        # Exact lookup for every entry (first one wins on duplicates, keeping config order).
        self._exact: dict[str, int] = {}
        for i, name in enumerate(normalised):
            self._exact.setdefault(name, i)
        # A candidate reaches the review band only if (sort + set) / 2 >= review_score, and
        # set is at most 100, so sort must be at least 2 * review_score - 100. That bound
        # lets rapidfuzz discard the rest of the list in C before any blended scoring.
        self._sort_cutoff = max(0.0, 2 * self.review_score - 100.0)
        self.score_name = lru_cache(maxsize=_NAME_CACHE_ENTRIES)(self._score_name)

    def __len__(self) -> int:
        return len(self._entries)

    def _score_name(self, name: str) -> NameMatch | None:
        """Best entry for a raw party name, or None when none came within reach of the
        review band (the prefilter dropped them unscored)."""
        query = normalise_name(name)
        if not query:
            return None
        exact = self._exact.get(query)
        if exact is not None:
            return NameMatch("HIT", 100.0, exact)
        if len(query) < MIN_FUZZY_NAME_CHARS or not self._fuzzy_names:
            return None
        candidates = process.extract(
            _sorted_words(query),
            self._fuzzy_sorted_names,
            scorer=fuzz.ratio,
            processor=None,
            score_cutoff=self._sort_cutoff,
            limit=None,
        )
        best: NameMatch | None = None
        # Visiting candidates in list order and replacing only on a strict win gives ties
        # to the entry listed first, whatever order rapidfuzz returns them in.
        for _choice, sort_score, position in sorted(candidates, key=lambda c: c[2]):
            set_score = fuzz.token_set_ratio(query, self._fuzzy_names[position], processor=None)
            match = NameMatch(self._outcome(sort_score, set_score), (sort_score + set_score) / 2.0, self._fuzzy_indices[position])
            if match.beats(best):
                best = match
        return best

    def _outcome(self, sort_score: float, set_score: float) -> Outcome:
        blended = (sort_score + set_score) / 2.0
        # Blocking without a person looking needs the whole names to agree (token sort);
        # a name that matches only as a subset of a listed one goes to review at most.
        if blended >= self.block_score and sort_score >= self.block_score:
            return "HIT"
        if blended >= self.review_score:
            return "POSSIBLE_MATCH"
        return "CLEAR"

    def verdict(self, matches: list[tuple[PartyRole, NameMatch | None]]) -> SanctionsVerdict:
        """Combine per-party matches; earlier parties win ties."""
        best_role: PartyRole | None = None
        best: NameMatch | None = None
        for role, match in matches:
            if match is not None and match.beats(best):
                best_role, best = role, match
        if best is None:
            return SanctionsVerdict(outcome="CLEAR", best_score=0.0)
        if best.outcome == "CLEAR":
            return SanctionsVerdict(outcome="CLEAR", best_score=round(best.score, 2))
        entry = self._entries[best.entry_index]
        return SanctionsVerdict(
            outcome=best.outcome,
            best_score=round(best.score, 2),
            matched_list=entry.list_name,
            matched_entry_id=entry.entry_id,
            matched_party=best_role,
        )


def screen_payment(payment: Payment, watchlist: Watchlist) -> SanctionsVerdict:
    """Screen both parties; the stronger match decides, the debtor winning a tie."""
    return watchlist.verdict(
        [
            ("debtor", watchlist.score_name(payment.debtor.name)),
            ("creditor", watchlist.score_name(payment.creditor.name)),
        ]
    )
