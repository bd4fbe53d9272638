import MMCore
import MMSync

/// Bits of an `hmm_pfns[]` entry (`enum hmm_pfn_flags`): output flags in the top byte, the pfn
/// below. As input, `requestFault`/`requestWrite` share the bits of `valid`/`write`.
public enum HMMPfn {
    public static let valid: UInt64 = 1 << 63
    public static let write: UInt64 = 1 << 62
    public static let error: UInt64 = 1 << 61
    public static let orderShift: UInt64 = 56
    public static let orderMask: UInt64 = 0x1F << 56
    /// Input: fault the page in if it is not valid.
    public static let requestFault: UInt64 = valid
    /// Input: fault it in writable.
    public static let requestWrite: UInt64 = write
    public static let flags: UInt64 = 0xFF << 56

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
