import HMM
import MMCore
import MMSync

extension DmirrorModule {
    /// Every device table entry still agrees with the CPU page table (so no entry outlived an
    /// invalidation that covered it): a read-only or WRITE entry names the page the CPU maps
    /// there (for device-private memory, the backing page of the device-private entry's page),
    /// WRITE only where the CPU mapping is writable; an ATOMIC entry names the page of the
    /// device-exclusive entry. Device pages in use are mapped only by their device's entries.
    /// Quiescent machines only.
    public func checkInvariants() -> [String] {
        var problems: [String] = []
        for device in devices {
            for mirror in device.openMirrors { problems += mirror.checkInvariants() }
        }
        return problems
    }
}

extension Dmirror {
    func checkInvariants() -> [String] {
        var problems: [String] = []
        let table = mutex.withLock { pt.entries() }
        if mm.isDead {
            if !table.isEmpty { problems.append("dmirror\(device.minor): \(table.count) entries survive the mm's exit") }
            return problems
        }
        mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
        for (vpn, e) in table {
            let address = vpn << pageShift
            let pfn = e >> 2, tag = e & 3
            let hex = "0x" + String(address, radix: 16)
            let what = "dmirror\(device.minor) entry at \(hex) (pfn \(pfn), tag \(tag))"
            guard let f = mm.pageTable.lookup(address, level: .pte) else { problems.append("\(what): no CPU mapping"); continue }
            var v = f.entry.load()
            if f.level != .pte {
                // A huge leaf (hugetlb, THP) or a device-private PMD: the page inside it at
                // this address.
                let offset = (address & (f.level.size - 1)) >> pageShift
                if v.isSwap && v.isHuge && v.swapEntry.isDevicePrivate {
                    v = SwapEntry.devicePrivate(pfn: v.swapEntry.pfn + offset, write: v.swapEntry.isWrite).pte()
                } else {
                    guard v.isPresent && v.isHuge else { problems.append("\(what): no CPU mapping (\(f.level) entry \(v))"); continue }
                    v = PTE(raw: v.raw &+ (offset << pageShift))
                }
            }
            if tag == Dmirror.tagAtomic {
                if !(v.isSwap && v.swapEntry.isDeviceExclusive && v.swapEntry.pfn == pfn) {
                    problems.append("\(what): CPU entry is \(v), not device-exclusive")
                }
                continue
            }
            if v.isPresent {
                if v.pfn != pfn { problems.append("\(what): CPU maps pfn \(v.pfn)") }
                if tag == Dmirror.tagWrite && !v.isWrite { problems.append("\(what): WRITE but the CPU mapping is read-only") }
            } else if v.isSwap && v.swapEntry.isDevicePrivate {
                let dpage = memory.page(v.swapEntry.pfn)
                let g = memory.pagemap(of: dpage)
                if g?.isOwned(by: device) != true {
                    problems.append("\(what): CPU entry names another device's page")
                } else if device.backingPage(dpage).pfn != pfn {
                    problems.append("\(what): not the backing page of device pfn \(dpage.pfn)")
                }
                if tag == Dmirror.tagWrite && !v.swapEntry.isWrite { problems.append("\(what): WRITE but the device-private entry is read-only") }
            } else {
                problems.append("\(what): CPU entry is \(v)")
            }
        }
        return problems
    }
}
