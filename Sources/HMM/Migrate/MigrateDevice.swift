import MMCore
import MMSync

/// Eviction of device memory without a VMA (`migrate_device_range` and friends): used by a
/// driver that must empty its memory (unbind, RELEASE) whatever process maps it.
extension Machine {
    /// `migrate_device_range`: selects `count` device pages from `startPfn` that are in use,
    /// locks them, and unmaps them everywhere (migration entries). Returns the source array.
    public func migrateDeviceRange(startPfn: UInt64, count: Int) -> [UInt64] {
        migrateDevicePfns((0..<UInt64(count)).map { startPfn + $0 })
    }

    /// `migrate_device_pfns`: the same for an arbitrary list of device pfns.
    public func migrateDevicePfns(_ pfns: [UInt64]) -> [UInt64] {
        var src = [UInt64](repeating: 0, count: pfns.count)
        for (i, pfn) in pfns.enumerated() {
            guard memory.isValidPfn(pfn) else { continue }
            let page = memory.page(pfn)
            // A tail page is taken with its head (`folio_get_nontail_page`): the head's entry
            // stands for the whole folio (COMPOUND).
            guard page.isZoneDevice, !page.test(.tail), memory.tryGet(page) else { continue }
            // Made a tail meanwhile (a new large folio): its head's entry stands for it.
            guard !page.test(.tail) else { memory.put(page); continue }
            guard page.tryLock() else { memory.put(page); continue }
            src[i] = MigratePfn.make(pfn) | MigratePfn.migrate
        }
        MigratePhases.unmap(self, &src, faultPage: nil)
        return src
    }

    /// `migrate_device_pages`: moves each source whose destination the driver provided.
    public func migrateDevicePages(_ src: inout [UInt64], _ dst: [UInt64]) {
        precondition(src.count == dst.count)
        MigratePhases.pages(self, &src, dst, migrate: nil)
    }

    /// `migrate_device_finalize`.
    public func migrateDeviceFinalize(_ src: [UInt64], _ dst: [UInt64]) {
        precondition(src.count == dst.count)
        MigratePhases.finalize(self, src, dst, faultPage: nil)
    }
}
