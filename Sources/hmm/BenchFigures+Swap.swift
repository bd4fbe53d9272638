#if canImport(Glibc)
import Glibc
#endif
import Devices
import MMCore
import MMSync
import NativeBaselines

extension BenchSuite {
    /// Swap figures (issue 15):
    /// - MADV_PAGEOUT of a populated region and a read of every page back (one load per page:
    ///   a major fault each), against `memcpy` of the same bytes twice — the copies swap-out and
    ///   swap-in make to and from a ramdisk area, the physical limit of this round trip;
    /// - one CPU thread writing and then reading a working set four times RAM (one access per
    ///   page), against the same two passes on a machine with enough RAM: what reclaim (kswapd,
    ///   running as in every kernel, and direct reclaim from the faulting thread when kswapd
    ///   falls behind) and swap-in cost on top of the faults themselves.
    func swapFigures() throws -> [BenchRow] {
        let bytes: UInt64 = quick ? 16 << 20 : 1 << 30
        let pages = bytes / pageSize
        let (round, copy) = try measurePair(reps, { () throws -> Double in
            let m = try Machine(memoryBytes: bytes + bytes / 32 + (64 << 20), devicePfnSpaceBytes: 0,
                                swapBytes: bytes + (16 << 20), populateRAM: true)
            let p = try MMCore.Process(machine: m)
            let cpu = p.makeCPU()
            defer { cpu.detach(); p.exit() }
            let a = try p.mmap(length: bytes, prot: .readWrite, flags: [.private, .anonymous])
            try cpu.run { cpu in
                var off: UInt64 = 0
                while off < bytes { try cpu.store(a + off, UInt64(off)); off += pageSize }
            }
            let t = try seconds {
                try p.madvise(a, length: bytes, advice: .pageout)
                try cpu.run { cpu in
                    var off: UInt64 = 0
                    while off < bytes { _ = try cpu.load(a + off, as: UInt64.self); off += pageSize }
                }
            }
            guard m.stats[.pswpout] == Int(pages), m.stats[.pswpin] == Int(pages) else {
                throw BenchError(description: "swapped out \(m.stats[.pswpout]) and in \(m.stats[.pswpin]) of \(pages) pages")
            }
            return Double(2 * bytes) / t / 1e9
        }, { () throws -> Double in memcpyRate(bytes, copies: 2) })

        let ram: UInt64 = quick ? 16 << 20 : 256 << 20
        let set = 4 * ram
        /// Return: ns per page access, and the 4 KiB copies swap made per page access (slot
        /// writes and reads).
        func stream(memory: UInt64, swap: UInt64, file: Bool = false) throws -> (Double, Double) {
            let m = try Machine(memoryBytes: memory, devicePfnSpaceBytes: 0, swapBytes: swap,
                                swapBacking: file ? .temporaryFile(directory: BenchSuite.swapFileDirectory) : .memory, populateRAM: true)
            if swap > 0 { m.startKswapd() }
            defer { m.stopKswapd() }
            let p = try MMCore.Process(machine: m)
            let cpu = p.makeCPU()
            defer { cpu.detach(); p.exit() }
            let a = try p.mmap(length: set, prot: .readWrite, flags: [.private, .anonymous])
            let accesses = Double(2 * set / pageSize)
            let t = try seconds {
                try cpu.run { cpu in
                    var off: UInt64 = 0
                    while off < set { try cpu.store(a + off, UInt64(off)); off += pageSize }
                    off = 0
                    while off < set {
                        guard try cpu.load(a + off, as: UInt64.self) == off else { throw BenchError(description: "bad bytes at \(off)") }
                        off += pageSize
                    }
                }
            }
            return (t / accesses * 1e9, Double(m.stats[.pswpout] + m.stats[.pswpin]) / accesses)
        }
        var copiesPerAccess: [Double] = []
        let (tight, roomy) = try measurePair(reps, { () throws -> Double in
                                                 let (ns, copies) = try stream(memory: ram, swap: set)
                                                 copiesPerAccess.append(copies)
                                                 return ns
                                             },
                                             { () throws -> Double in try stream(memory: set + set / 32 + (64 << 20), swap: 0).0 })
        // The same stream through a swap file: swap-in reads ahead and keeps the swap cache, so
        // a page read back and evicted again is not written again. Swap is sized so that it is
        // never half full (vm_swap_full would give the cache up): every page keeps its slot.
        var fileCopies: [Double] = []
        let (fileTight, fileRoomy) = try measurePair(reps, { () throws -> Double in
                                                         let (ns, copies) = try stream(memory: ram, swap: 2 * set + (64 << 20), file: true)
                                                         fileCopies.append(copies)
                                                         return ns
                                                     },
                                                     { () throws -> Double in try stream(memory: set + set / 32 + (64 << 20), swap: 0).0 })
        // The stream's limit: the faults it makes anyway (enough RAM) plus the copies its swap
        // I/O must make, each at the speed of one large memcpy (a ramdisk's write or read).
        let copyNs = 1e9 * Double(pageSize) / (memcpyRate(quick ? 16 << 20 : 256 << 20, copies: 1) * 1e9)
        let streamLimit = roomy.median + spread(copiesPerAccess).median * copyNs
        var loadedCopies: [Double] = []
        let (loaded, roomyLoaded) = try measurePair(reps, { () throws -> Double in
                                                        let (ns, copies) = try reclaimUnderLoad(memory: ram, set: 3 * ram, swap: 4 * ram)
                                                        loadedCopies.append(copies)
                                                        return ns
                                                    },
                                                    { () throws -> Double in try reclaimUnderLoad(memory: 4 * ram + (64 << 20), set: 3 * ram, swap: 0).0 })
        return [
            BenchRow(name: "MADV_PAGEOUT + swap-in of \(bytes >> 20)MiB vs memcpy twice", unit: "GB/s", value: round.median,
                     baseline: copy.median, spread: (round.min, round.max), kind: .rate, target: 0.5),
            BenchRow(name: "write + read of 4x RAM (\(set >> 20)MiB on \(ram >> 20)MiB) vs enough RAM", unit: "ns/page", value: tight.median,
                     baseline: roomy.median, spread: (tight.min, tight.max), kind: .time, target: 3.0),
            BenchRow(name: "  the same vs its limit: enough RAM plus its swap copies", unit: "ns/page", value: tight.median,
                     baseline: streamLimit, spread: (tight.min, tight.max), kind: .time, target: 2.0),
            BenchRow(name: "write + read of 4x RAM through a swap file (readahead, swap cache kept) vs enough RAM", unit: "ns/page",
                     value: fileTight.median, baseline: fileRoomy.median, spread: (fileTight.min, fileTight.max), kind: .time, target: 3.0),
            BenchRow(name: "  the same vs its limit: enough RAM plus its swap copies", unit: "ns/page", value: fileTight.median,
                     baseline: fileRoomy.median + spread(fileCopies).median * copyNs,
                     spread: (fileTight.min, fileTight.max), kind: .time, target: 2.0),
            BenchRow(name: "2 CPU threads over 3x RAM beside a migrating device vs enough RAM", unit: "ns/page", value: loaded.median,
                     baseline: roomyLoaded.median, spread: (loaded.min, loaded.max), kind: .time, target: 3.0),
            // Its limit as the streams': the same run with enough RAM, plus the copies its swap
            // I/O made (per CPU page access), each at one memcpy's speed and added one after
            // another — a lenient limit, as the streams' is (there kswapd's writes overlap the
            // CPU thread's reads too): here two CPU threads and kswapd could copy at once, but
            // they share two cores with the device.
            BenchRow(name: "  the same vs its limit: enough RAM plus its swap copies", unit: "ns/page", value: loaded.median,
                     baseline: roomyLoaded.median + spread(loadedCopies).median * copyNs,
                     spread: (loaded.min, loaded.max), kind: .time, target: 2.0),
        ]
    }

    /// Where the bench's swap file goes: the host's /dev/shm when it has one (a file in host
    /// memory, as the ramdisk areas are), else the temporary directory.
    static var swapFileDirectory: String? {
        var st = stat()
        return stat("/dev/shm", &st) == 0 && st.st_mode & S_IFMT == S_IFDIR ? "/dev/shm" : nil
    }

    /// Two CPU threads each write and read back their half of `set` bytes (one access per
    /// page, checked) while a device thread reads an 8 MiB region of its own (faulting it in),
    /// migrates it to the device and back, again and again; reclaim keeps up on a machine of
    /// `memory` with `swap`. The region's bytes are checked at the end. Return: ns per CPU
    /// page access, and the 4 KiB copies swap made (slot writes and reads) per CPU page access.
    func reclaimUnderLoad(memory: UInt64, set: UInt64, swap: UInt64) throws -> (Double, Double) {
        let m = try Machine(memoryBytes: memory, devicePfnSpaceBytes: 1 << 30, swapBytes: swap, populateRAM: true)
        if swap > 0 { m.startKswapd() }
        defer { m.stopKswapd() }
        let p = try MMCore.Process(machine: m)
        let cpu = p.makeCPU()
        defer { cpu.detach(); p.exit() }
        let region: UInt64 = 8 << 20, rpages = region / pageSize
        let r = try p.mmap(length: region, prot: .readWrite, flags: [.private, .anonymous])
        try cpu.run { cpu in
            var off: UInt64 = 0
            while off < region { try cpu.store(r + off, UInt64(off) | 1); off += pageSize }
        }
        let d = try DmirrorModule(machine: m).open(minor: 0, mm: p.mm)
        defer { d.close() }
        let a = try p.mmap(length: set, prot: .readWrite, flags: [.private, .anonymous])
        let stop = AtomicWord(0), failures = AtomicWord(0), rounds = AtomicWord(0)
        let device = ModelThread.spawn(name: "device") {
            let buf = DmirrorBuffer(size: Int(region))
            while stop.load() == 0 {
                var c = DmirrorCmd(addr: r, npages: rpages)
                do { try d.ioctl(.read, &c, buffer: buf) } catch { failures.add(1) }
                c = DmirrorCmd(addr: r, npages: rpages)
                // Pages reclaim swapped out meanwhile are passed over: ENOENT from the read-back.
                do { try d.ioctl(.migrateToDevice, &c, buffer: buf) } catch { if (error as? Errno) != .ENOENT { failures.add(1) } }
                c = DmirrorCmd(addr: r, npages: rpages)
                do { try d.ioctl(.migrateToSystem, &c) } catch { failures.add(1) }
                rounds.add(1)
            }
        }
        let half = set / 2
        // The copies of the timed part only (not the region's set-up and check).
        let copiesBefore = m.stats[.pswpout] + m.stats[.pswpin]
        var copiesTimed = 0
        let t = seconds {
            let threads = (0..<2).map { k in
                p.spawnThread(name: "cpu\(k)") { cpu in
                    let base = a + UInt64(k) * half
                    do {
                        var off: UInt64 = 0
                        while off < half { try cpu.store(base + off, UInt64(off) ^ UInt64(k)); off += pageSize }
                        off = 0
                        while off < half {
                            if try cpu.load(base + off, as: UInt64.self) != UInt64(off) ^ UInt64(k) { failures.add(1) }
                            off += pageSize
                        }
                    } catch { failures.add(1) }
                }
            }
            threads.forEach { $0.join() }
            copiesTimed = m.stats[.pswpout] + m.stats[.pswpin] - copiesBefore
        }
        stop.store(1)
        device.join()
        try cpu.run { cpu in
            var off: UInt64 = 0
            while off < region {
                guard try cpu.load(r + off, as: UInt64.self) == UInt64(off) | 1 else { throw BenchError(description: "bad device-region bytes at \(off)") }
                off += pageSize
            }
        }
        guard failures.load() == 0 else { throw BenchError(description: "\(failures.load()) failed accesses or device commands") }
        guard rounds.load() > 0 else { throw BenchError(description: "the device never completed a round") }
        let accesses = Double(2 * set / pageSize)
        return (t / accesses * 1e9, Double(copiesTimed) / accesses)
    }
}
