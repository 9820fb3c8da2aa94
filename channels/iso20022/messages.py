"""The ISO 20022 messages Tally reads and writes, as typed values.

These are what `channels/iso20022/codec.py` parses a partner's XML into and builds XML
from; nobody outside the codec touches an element tree. Amounts are integer minor units
(fen) with the currency beside them, as everywhere in Tally; a decimal string on the wire
is converted exactly by the codec, never through a float.

An agent (a bank) is one string: a BIC (`ICBKCNBJXXX`, the `BICFI` element) or a CNAPS
bank code of 12 digits (the `ClrSysMmbId/MmbId` element, with clearing system `CNAPS`):
the codec picks the element by the form of the string and gives back what it read.

Optional ISO elements that Tally reads are `None` when absent (`instruction_id`,
`remittance`, `control_sum_minor`...); text is never stripped or rewritten: what a
partner sent is what the services see.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal

# The message definitions (the `MsgDefIdr`s) of the profile.
PACS_008: Final = "pacs.008.001.08"  # FIToFICustomerCreditTransfer: credits to our customers
PACS_002: Final = "pacs.002.001.10"  # FIToFIPaymentStatusReport: our answer to the two below
PACS_004: Final = "pacs.004.001.09"  # PaymentReturn: a partner returns a transfer of ours
CAMT_053: Final = "camt.053.001.08"  # BankToCustomerStatement
CAMT_054: Final = "camt.054.001.08"  # BankToCustomerDebitCreditNotification
MESSAGE_TYPES: Final = (PACS_008, PACS_002, PACS_004, CAMT_053, CAMT_054)

# A transaction's status in a pacs.002 (ExternalPaymentTransactionStatus1Code): ACSC
# settled (booked, durable); RJCT refused with a reason; PDNG not decided: the engine shed
# load before the item was admitted, the partner sends it again (same TxId) later.
TxStatusCode = Literal["ACSC", "RJCT", "PDNG"]
# The message's status (ExternalPaymentGroupStatus1Code): ACSC every item settled, RJCT
# none (or the whole message refused), PART some of each, PDNG none decided yet.
GroupStatusCode = Literal["ACSC", "PART", "RJCT", "PDNG"]


@dataclass(frozen=True, slots=True)
class CreditTransfer:
    """One `CdtTrfTxInf` of a pacs.008: a credit to one of our customers."""

    instruction_id: str | None  # PmtId/InstrId (optional in ISO)
    end_to_end_id: str  # PmtId/EndToEndId: the debtor's reference, carried end to end
    tx_id: str  # PmtId/TxId: unique per instructing agent (required in this profile)
    amount_minor: int  # IntrBkSttlmAmt, fen
    currency: str  # IntrBkSttlmAmt/@Ccy (CNY only)
    debtor_name: str  # Dbtr/Nm
    debtor_account: str  # DbtrAcct/Id/Othr/Id
    debtor_agent: str  # DbtrAgt/FinInstnId: BIC or CNAPS bank code
    creditor_name: str  # Cdtr/Nm
    creditor_account: str  # CdtrAcct/Id/Othr/Id: our 19-digit account number
    creditor_agent: str  # CdtrAgt/FinInstnId: BIC or CNAPS bank code (ours)
    remittance: str | None  # RmtInf/Ustrd (at most one in this profile)


@dataclass(frozen=True, slots=True)
class CreditTransfers:
    """A pacs.008 `FIToFICstmrCdtTrf`: the group header and its transactions."""

    msg_id: str  # GrpHdr/MsgId
    created: dt.datetime  # GrpHdr/CreDtTm
    number: int  # GrpHdr/NbOfTxs (checked == len(transactions) when parsed)
    control_sum_minor: int | None  # GrpHdr/CtrlSum (checked == the sum when present)
    settlement_date: dt.date  # GrpHdr/IntrBkSttlmDt (required in this profile)
    instructing_agent: str  # GrpHdr/InstgAgt/FinInstnId (required in this profile)
    transactions: tuple[CreditTransfer, ...]


@dataclass(frozen=True, slots=True)
class PaymentReturn:
    """One `TxInf` of a pacs.004: a partner returns (part of) a transfer we sent it."""

    return_id: str  # RtrId
    original_msg_id: str  # OrgnlGrpInf/OrgnlMsgId
    original_end_to_end_id: str  # OrgnlEndToEndId
    original_tx_id: str  # OrgnlTxId: our transfer id (hex) as we sent it
    amount_minor: int  # RtrdIntrBkSttlmAmt, fen
    currency: str  # RtrdIntrBkSttlmAmt/@Ccy (CNY only)
    reason: str  # RtrRsnInf/Rsn/Cd (an ExternalReturnReason1Code: AC04, MD07...)


@dataclass(frozen=True, slots=True)
class PaymentReturns:
    """A pacs.004 `PmtRtr`."""

    msg_id: str
    created: dt.datetime
    instructing_agent: str
    returns: tuple[PaymentReturn, ...]


@dataclass(frozen=True, slots=True)
class TxStatus:
    """One `TxInfAndSts` of a pacs.002."""

    original_end_to_end_id: str
    original_tx_id: str
    status: TxStatusCode
    reason: str | None = None  # StsRsnInf/Rsn/Cd (an ExternalStatusReason1Code), RJCT only
    detail: str | None = None  # StsRsnInf/AddtlInf (at most 105 characters: cut if longer)


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A pacs.002 `FIToFIPmtStsRpt`: our answer to one pacs.008 or pacs.004."""

    msg_id: str
    created: dt.datetime
    original_msg_id: str
    original_msg_type: str  # PACS_008 | PACS_004 (OrgnlMsgNmId)
    group_status: GroupStatusCode
    group_reason: str | None = None  # FF01, AM19... when the whole message is refused
    transactions: tuple[TxStatus, ...] = ()
    group_detail: str | None = None  # the group reason's AddtlInf


@dataclass(frozen=True, slots=True)
class StatementEntry:
    """One `Ntry` of a camt.053 / camt.054: one posting on the account."""

    entry_ref: str  # NtryRef
    amount_minor: int  # Amt, fen, > 0 (the side is `credit`)
    credit: bool  # CdtDbtInd CRDT / DBIT
    booked_ns: int  # BookgDt/DtTm, ns since the epoch (UTC)
    value_date: dt.date  # ValDt/Dt
    transfer_id_hex: str  # AcctSvcrRef: the ledger's transfer id
    code_name: str  # BkTxCd/Prtry/Cd: the transfer code's name (EXTERNAL_TRANSFER_IN...)
    counterparty: str | None = None  # NtryDtls/TxDtls/RltdPties/(Dbtr|Cdtr)/Pty/Nm
    remittance: str | None = None  # NtryDtls/TxDtls/RmtInf/Ustrd


@dataclass(frozen=True, slots=True)
class Statement:
    """A camt.053 statement (`Stmt`) or camt.054 notification (`Ntfctn`) of one account."""

    msg_id: str
    created: dt.datetime
    account_id: int  # the ledger's account id
    account_number: str  # Acct/Id/Othr/Id (the 19-digit number)
    currency: str
    from_date: dt.date  # FrToDt (from 00:00:00, to 23:59:59, in `created`'s zone)
    to_date: dt.date
    opening_minor: int  # Bal OPBD (camt.053 only; signed: below 0 is DBIT)
    closing_minor: int  # Bal CLBD (camt.053 only)
    entries: tuple[StatementEntry, ...]
    kind: Literal["camt.053", "camt.054"] = "camt.053"
