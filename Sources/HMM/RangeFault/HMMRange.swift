import MMCore
import MMSync

/// Bits of an `hmm_pfns[]` entry (`enum hmm_pfn_flags`, Linux 7.2 on 64-bit): output flags in
/// bits 63…58, the mapping order in bits 57…53 (`HMM_PFN_ORDER_SHIFT` = 64 − 11), the pfn below.
/// As input, `requestFault`/`requestWrite` share the bits of `valid`/`write`. The in/out flags
/// (`dmaMapped`, `p2pdma`, `p2pdmaBus`) belong to the driver and survive every walk.
public enum HMMPfn {
    public static let valid: UInt64 = 1 << 63
    public static let write: UInt64 = 1 << 62
    public static let error: UInt64 = 1 << 61
    /// Sticky: the driver has DMA-mapped the page (`HMM_PFN_DMA_MAPPED`).
    public static let dmaMapped: UInt64 = 1 << 60
    /// Sticky: a peer-to-peer DMA page (`HMM_PFN_P2PDMA`, `HMM_PFN_P2PDMA_BUS`).
    public static let p2pdma: UInt64 = 1 << 59
    public static let p2pdmaBus: UInt64 = 1 << 58
    /// `HMM_PFN_INOUT_FLAGS`: kept from input to output.
    public static let inoutFlags: UInt64 = dmaMapped | p2pdma | p2pdmaBus
    public static let orderShift: UInt64 = 53
    public static let orderMask: UInt64 = 0x1F << 53
    /// Input: fault the page in if it is not valid.
    public static let requestFault: UInt64 = valid
    /// Input: fault it in writable.
    public static let requestWrite: UInt64 = write
    /// `HMM_PFN_FLAGS`: every bit above the pfn (0xFFE0_0000_0000_0000).
    public static let flags: UInt64 = ~((1 << orderShift) - 1)

    @inlinable public static func pfn(_ e: UInt64) -> UInt64 { e & ~flags }
    @inlinable public static func order(_ e: UInt64) -> Int { Int((e & orderMask) >> orderShift) }
    @inlinable public static func isValid(_ e: UInt64) -> Bool { e & valid != 0 }
    @inlinable public static func isWrite(_ e: UInt64) -> Bool { e & write != 0 }
    @inlinable public static func isError(_ e: UInt64) -> Bool { e & error != 0 }
}

/// A range to snapshot or fault (`struct hmm_range`).
public struct HMMRange {
    /// The interval notifier that covers the range; its mm is the one walked.
    public let notifier: MMUIntervalNotifier
    /// From `notifier.readBegin()`; `hmmRangeFault` fails with EBUSY once it is stale.
    public var notifierSeq: UInt64
    public let start: UInt64
    public let end: UInt64
    /// One entry per page: requests on input, pfn and flags on output.
    public var hmmPfns: [UInt64]
    /// Requests applied to every page (`default_flags`).
    public var defaultFlags: UInt64
    /// Which per-page request bits are honoured (`pfn_flags_mask`).
    public var pfnFlagsMask: UInt64
    /// Device-private pages of this owner are reported instead of faulted.
    public var devPrivateOwner: AnyObject?

    public init(notifier: MMUIntervalNotifier, notifierSeq: UInt64, start: UInt64, end: UInt64,
                defaultFlags: UInt64 = 0, pfnFlagsMask: UInt64 = 0, devPrivateOwner: AnyObject? = nil) {
        self.notifier = notifier; self.notifierSeq = notifierSeq; self.start = start; self.end = end
        self.defaultFlags = defaultFlags; self.pfnFlagsMask = pfnFlagsMask; self.devPrivateOwner = devPrivateOwner
        hmmPfns = [UInt64](repeating: 0, count: end > start ? Int((end - start) >> pageShift) : 0)
    }

    public var pageCount: Int { hmmPfns.count }
}
