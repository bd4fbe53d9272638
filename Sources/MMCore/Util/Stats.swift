import MMSync

/// Event counters of one machine (relaxed increments; read for `--stats` and tests).
public final class MMStats: @unchecked Sendable {
    public enum Counter: Int, CaseIterable, Sendable {
        case faultAnonZeroPage, faultAnonNewPage, faultCOWCopy, faultCOWReuse, faultFileRead, faultShared
        case faultWriteShared, faultMigrationWait, faultDevicePrivate, faultDeviceExclusive
        case faultSIGSEGV, faultSIGBUS, faultRetry
        case tlbShootdown, tlbShootdownWaits, tlbFlushLocal
        case pagesMigrated, pagesMigrationFailed, pagesMigratedToDevice, pagesMigratedToSystem
        case notifierInvalidations, notifierRetries
        case invalidateUnmap, invalidateClear, invalidateProtectionVMA, invalidateProtectionPage
        case invalidateSoftDirty, invalidateRelease, invalidateMigrate, invalidateExclusive
        case bytesCopied, forks, gupPages, pins
    }
    @usableFromInline let counters: [AtomicCounter] = Counter.allCases.map { _ in AtomicCounter(0) }
    public init() {}
    @inlinable public func count(_ c: Counter, _ n: Int = 1) {
        if n == 1 { counters[c.rawValue].increment() } else { counters[c.rawValue].add(n) }
    }
    public subscript(_ c: Counter) -> Int { counters[c.rawValue].load() }

    /// The per-event invalidation counter for `event`.
    public static func invalidationCounter(_ event: MMUNotifyEvent) -> Counter {
        switch event {
        case .unmap: return .invalidateUnmap
        case .clear: return .invalidateClear
        case .protectionVMA: return .invalidateProtectionVMA
        case .protectionPage: return .invalidateProtectionPage
        case .softDirty: return .invalidateSoftDirty
        case .release: return .invalidateRelease
        case .migrate: return .invalidateMigrate
        case .exclusive: return .invalidateExclusive
        }
    }
    public func snapshot() -> [(String, Int)] { Counter.allCases.map { ("\($0)", self[$0]) } }
}
