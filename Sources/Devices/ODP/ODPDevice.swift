import HMM
import MMCore
import MMSync

/// What a memory region allows (`IBV_ACCESS_*`).
public struct ODPAccess: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let localWrite = ODPAccess(rawValue: 1)
    public static let remoteRead = ODPAccess(rawValue: 2)
    public static let remoteWrite = ODPAccess(rawValue: 4)
    public static let remoteAtomic = ODPAccess(rawValue: 8)
    public static let all: ODPAccess = [.localWrite, .remoteRead, .remoteWrite, .remoteAtomic]
}

/// An RDMA NIC with on-demand paging (issue 17), after mlx5's ODP and
/// `drivers/infiniband/core/umem_odp.c`, on swift-hmm's public HMM API: memory regions are
/// registered without pinning; the NIC translates their pages through a table of its own,
/// filled by `hmmRangeFault` on a miss (a NIC page fault) and emptied by the region's interval
/// notifier; queue pairs (threads) carry out RDMA READ, WRITE and atomics between regions of
/// any processes. A region can also be registered pinned (`pin_user_pages` long-term), the
/// way RDMA worked before ODP, for comparison.
public final class ODPDevice: @unchecked Sendable {
    public let machine: Machine
    public let stats = ODPStats()
    /// Bytes of the NIC's translation tables (8 a page of every region and implicit child),
    /// at most `tableBytesLimit`: an eighth of the machine's memory (tables for 64 times the
    /// memory there is), so no script makes the host allocate without bound.
    public let tableBytes = AtomicCounter(0)
    public let tableBytesLimit: Int
    public init(machine: Machine) {
        self.machine = machine
        tableBytesLimit = Int(machine.memory.systemFrames << pageShift) / 8
    }

    /// Charges `bytes` of translation table. Errors: ENOMEM past `tableBytesLimit`.
    func chargeTable(_ bytes: Int) throws(Errno) {
        while true {
            let now = tableBytes.load()
            guard bytes <= tableBytesLimit - now else { throw .ENOMEM }
            if tableBytes.compareExchange(expected: now, desired: now + bytes) { return }
        }
    }
    func unchargeTable(_ bytes: Int) { tableBytes.add(-bytes) }

    /// `ibv_reg_mr`: a region of `length` bytes at `address` in `mm` (any alignment; the NIC
    /// works on the pages it touches). With `pinned`, every page is faulted in and pinned
    /// long-term now (no translation ever misses or goes); otherwise (ODP) nothing is faulted
    /// until the NIC needs it. Address 0 and length `UInt64.max` register an implicit ODP
    /// region: the whole address space, as mlx5 does for `ibv_reg_mr(pd, NULL, SIZE_MAX,
    /// IBV_ACCESS_ON_DEMAND)`.
    /// Errors: EINVAL for an empty or wrapping range, a pinned implicit region or an exited
    /// process; EFAULT (pinned) for a page outside any VMA; ENOMEM when the NIC's translation
    /// tables (8 bytes a page) would pass `tableBytesLimit`.
    public func register(_ mm: AddressSpace, address: UInt64, length: UInt64, access: ODPAccess,
                         pinned: Bool = false) throws(Errno) -> ODPMemoryRegion {
        guard !mm.isDead else { throw .EINVAL }
        if address == 0 && length == .max {
            guard !pinned else { throw .EINVAL }
            return try ODPMemoryRegion(device: self, mm: mm, address: 0, length: .max, access: access, pinned: false, implicit: true)
        }
        guard length > 0, address.addingReportingOverflow(length).overflow == false,
              address + length <= taskSize else { throw .EINVAL }
        return try ODPMemoryRegion(device: self, mm: mm, address: address, length: length, access: access, pinned: pinned, implicit: false)
    }
}

/// What the NIC did, as `ib_umem_odp`'s and mlx5's counters count it.
public final class ODPStats: @unchecked Sendable {
    public enum Counter: Int, CaseIterable, Sendable, CustomStringConvertible {
        /// Pages the NIC faulted in (`hmm_range_fault`) on a translation miss.
        case pageFaults
        /// Notifier callbacks that dropped translations, and the pages they dropped.
        case invalidations, pagesInvalidated
        /// Work requests completed, and bytes moved by READ and WRITE.
        case operations, bytes
        /// Work requests completed with an error.
        case errors
        public var description: String {
            ["page_faults", "invalidations", "pages_invalidated", "operations", "bytes", "errors"][rawValue]
        }
    }
    private let counters = (0..<Counter.allCases.count).map { _ in AtomicCounter(0) }
    public func count(_ c: Counter, _ n: Int = 1) { counters[c.rawValue].add(n) }
    public subscript(_ c: Counter) -> Int { counters[c.rawValue].load() }
    public var snapshot: [(String, Int)] { Counter.allCases.map { ($0.description, self[$0]) } }
}
