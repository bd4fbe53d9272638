import HMM
import MMCore
import MMSync

extension Dmirror {
    /// The ioctl entry point (`dmirror_fops_unlocked_ioctl`): validates, resets `cpages` and
    /// `faults`, dispatches. On error the caller's `cmd` is left as it was (no copy-out).
    /// Errors: EINVAL (closed mirror, unaligned addr, empty or wrapping range), and each
    /// command's own.
    public func ioctl(_ command: DmirrorCommand, _ cmd: inout DmirrorCmd, buffer: DmirrorBuffer? = nil) throws(Errno) {
        guard isOpen else { throw .EINVAL }
        guard !isCutOff else { throw .EIO }
        guard isPageAligned(cmd.addr) else { throw .EINVAL }
        let (size, o1) = cmd.npages.multipliedReportingOverflow(by: pageSize)
        let (end, o2) = cmd.addr.addingReportingOverflow(size)
        guard !o1, !o2, end > cmd.addr else { throw .EINVAL }
        // The bounce buffer of READ/WRITE/MIGRATE/EXCLUSIVE is kvmalloc'd: too large → ENOMEM.
        if [.read, .write, .migrateToDevice, .exclusive].contains(command) && cmd.npages > Dmirror.maxBouncePages { throw .ENOMEM }
        var work = cmd
        work.cpages = 0
        work.faults = 0
        switch command {
        case .read: try read(&work, buffer)
        case .write: try write(&work, buffer)
        case .migrateToDevice: try migrateToDevice(&work, buffer)
        case .migrateToSystem: try migrateToSystem(&work)
        case .snapshot: try snapshot(&work, buffer)
        case .exclusive: try exclusive(&work, buffer)
        case .checkExclusive: try checkExclusive(work)
        case .release: try device.removeChunks()
        case .flags: mutex.withLock { flags = work.npages }
        }
        cmd = work
    }

    /// Raw ioctl by number (`0xC02848nn`): EINVAL for an unknown number.
    public func ioctl(number: UInt32, _ cmd: inout DmirrorCmd, buffer: DmirrorBuffer? = nil) throws(Errno) {
        guard isOpen else { throw .EINVAL }
        guard let c = DmirrorCommand(ioctl: number) else { throw .EINVAL } // unknown command
        try ioctl(c, &cmd, buffer: buffer)
    }

    /// Copies the bounce buffer out to the user buffer (`copy_to_user`): EFAULT if too small.
    private func copyOut(_ bounce: UnsafeRawBufferPointer, to buffer: DmirrorBuffer?) throws(Errno) {
        guard let buffer, buffer.count >= bounce.count else { throw .EFAULT }
        buffer.bytes.baseAddress!.copyMemory(from: bounce.baseAddress!, byteCount: bounce.count)
    }

    // MARK: READ / WRITE

    /// `dmirror_do_read`: copies mirrored pages from `start` until the first missing entry.
    /// Return: pages copied; ENOENT-equivalent is `copied < count`. Locking: `mutex` held.
    private func doRead(_ start: UInt64, _ end: UInt64, into bounce: UnsafeMutableRawBufferPointer, base: UInt64) -> UInt64 {
        mutex.assertHeld()
        var pfns: [UInt64] = []
        var a = start
        while a < end {
            guard let e = pt[a >> pageShift] else { break }
            pfns.append(e >> 2)
            a += pageSize
        }
        let off = Int(start - base)
        memory.gatherFramesParallel(on: device.copyEngine, into: UnsafeMutableRawBufferPointer(rebasing: bounce[off...]), from: pfns)
        return UInt64(pfns.count)
    }

    /// `dmirror_read`: device reads; missing pages are faulted in a round at a time.
    /// On an exited mm the device table is empty, so the first fault fails with EFAULT.
    func read(_ cmd: inout DmirrorCmd, _ buffer: DmirrorBuffer?) throws(Errno) {
        let size = Int(cmd.npages * pageSize)
        let end = cmd.addr + cmd.npages * pageSize
        // Fast path: everything already mirrored and the user buffer big enough, so nothing can
        // fail after the copy starts; copy straight into the user buffer (one copy, not two).
        if let buffer, buffer.count >= size {
            let direct = mutex.withLock { () -> Bool in
                guard pt.allPresent(cmd.addr >> pageShift, end >> pageShift) else { return false }
                _ = doRead(cmd.addr, end, into: buffer.bytes, base: cmd.addr)
                return true
            }
            if direct {
                cmd.cpages = cmd.npages
                machine.stats.count(.bytesCopied, size)
                return
            }
        }
        let bounce = takeBounce(size)
        defer { returnBounce(bounce) }
        let base = cmd.addr
        try accessLoop(&cmd, write: false) { start, end in doRead(start, end, into: bounce, base: base) }
        machine.stats.count(.bytesCopied, size)
        try copyOut(UnsafeRawBufferPointer(rebasing: bounce[0..<size]), to: buffer)
    }

    /// `dmirror_do_write`: writes mirrored pages that are WRITE-tagged, from `start` on.
    /// Locking: `mutex` held.
    private func doWrite(_ start: UInt64, _ end: UInt64, from bounce: UnsafeRawBufferPointer, base: UInt64) -> UInt64 {
        mutex.assertHeld()
        var pfns: [UInt64] = []
        var a = start
        while a < end {
            guard let e = pt[a >> pageShift], e & 3 == Dmirror.tagWrite else { break }
            pfns.append(e >> 2)
            a += pageSize
        }
        let off = Int(start - base)
        memory.scatterFramesBulk(to: pfns, from: UnsafeRawBufferPointer(rebasing: bounce[off...]))
        return UInt64(pfns.count)
    }

    /// `dmirror_write`: device writes; missing or read-only pages get write faults.
    /// On an exited mm the first fault fails with EFAULT, as READ's does.
    func write(_ cmd: inout DmirrorCmd, _ buffer: DmirrorBuffer?) throws(Errno) {
        let size = Int(cmd.npages * pageSize)
        guard let buffer, buffer.count >= size else { throw .EFAULT }
        let bounce = UnsafeRawBufferPointer(start: buffer.bytes.baseAddress, count: size)
        let base = cmd.addr
        try accessLoop(&cmd, write: true) { start, end in doWrite(start, end, from: bounce, base: base) }
        machine.stats.count(.bytesCopied, size)
    }

    /// The loop of READ and WRITE: under the mutex, `access` moves pages from `start` up to the
    /// first one that needs a fault (returning how many it moved); then one fault round, and
    /// again. EBUSY after 10,000 rounds (a livelock guard).
    private func accessLoop(_ cmd: inout DmirrorCmd, write: Bool, _ access: (UInt64, UInt64) -> UInt64) throws(Errno) {
        let end = cmd.addr + cmd.npages * pageSize
        var start = cmd.addr
        while true {
            let from = start
            cmd.cpages += mutex.withLock { access(from, end) }
            start = cmd.addr + cmd.cpages * pageSize
            if start >= end { return }
            try fault(start, end, write: write)
            cmd.faults += 1
            if cmd.faults > 10_000 { throw .EBUSY }
        }
    }

    // MARK: SNAPSHOT

    /// `dmirror_mkentry`: one SNAPSHOT byte for an hmm pfn.
    func snapshotByte(_ e: UInt64) -> UInt8 {
        if HMMPfn.isError(e) { return DmirrorProt.error }
        guard HMMPfn.isValid(e) else { return DmirrorProt.none }
        let page = memory.page(HMMPfn.pfn(e))
        var b: UInt8
        if page.isDevicePrivate {
            b = memory.pagemap(of: page)?.isOwned(by: device) == true ? DmirrorProt.devPrivateLocal : DmirrorProt.devPrivateRemote
        } else if page.isDeviceCoherent {
            b = memory.pagemap(of: page)?.isOwned(by: device) == true ? DmirrorProt.devCoherentLocal : DmirrorProt.devCoherentRemote
        } else if page.pfn == PhysicalMemory.zeroPfn {
            b = DmirrorProt.zero
        } else {
            b = DmirrorProt.none
        }
        b |= HMMPfn.isWrite(e) ? DmirrorProt.write : DmirrorProt.read
        let order = UInt64(HMMPfn.order(e))
        if order + pageShift == pmdShift { b |= DmirrorProt.pmd } else if order + pageShift == pudShift { b |= DmirrorProt.pud }
        return b
    }

    /// `dmirror_snapshot`: the CPU page table's state, one byte per page, without faulting.
    func snapshot(_ cmd: inout DmirrorCmd, _ buffer: DmirrorBuffer?) throws(Errno) {
        guard !mm.isDead else { throw .EINVAL }
        let end = cmd.addr + cmd.npages * pageSize
        var addr = cmd.addr
        while addr < end {
            let next = min(end, addr + Dmirror.faultBatch * pageSize)
            let bytes = try snapshotBatch(addr, next)
            let off = Int((addr - cmd.addr) >> pageShift)
            guard let buffer, buffer.count >= off + bytes.count else { throw .EFAULT }
            for (i, b) in bytes.enumerated() { buffer[byte: off + i] = b }
            cmd.cpages += UInt64(bytes.count)
            addr = next
        }
    }

    /// One batch under a temporary interval notifier (`dmirror_range_snapshot`).
    private func snapshotBatch(_ start: UInt64, _ end: UInt64) throws(Errno) -> [UInt8] {
        let sub = MMUIntervalNotifier(start: start, end: end) { [unowned self] sub, range, seq in
            if range.blockable { self.mutex.lock() } else if !self.mutex.tryLock() { return false }
            sub.setSeq(seq)
            self.mutex.unlock()
            return true
        }
        try mm.notifiers.insert(sub)
        defer { mm.notifiers.remove(sub) }
        var range = HMMRange(notifier: sub, notifierSeq: 0, start: start, end: end, devPrivateOwner: device)
        var out: [UInt8] = []
        try HMMMirror.faultAndProgram(&range, driverLock: mutex) { (r: HMMRange) throws(Errno) in
            out = r.hmmPfns.map { self.snapshotByte($0) }
        }
        return out
    }

    // MARK: EXCLUSIVE / CHECK_EXCLUSIVE

    /// `dmirror_exclusive`: device-exclusive access page by page, then a read of the range.
    func exclusive(_ cmd: inout DmirrorCmd, _ buffer: DmirrorBuffer?) throws(Errno) {
        guard !mm.isDead else { throw .EINVAL }
        let end = cmd.addr + cmd.npages * pageSize
        mm.mmapLock.lockRead()
        var addr = cmd.addr
        while addr < end {
            let page: Page
            do { page = try mm.makeDeviceExclusive(addr, owner: nil) } catch { mm.mmapLock.unlockRead(); throw error }
            mutex.withLock { if !isCutOff { pt[addr >> pageShift] = page.pfn << 2 | Dmirror.tagAtomic } }
            page.unlock()
            memory.put(page)
            addr += pageSize
        }
        mm.mmapLock.unlockRead()
        try readBack(&cmd, buffer)
    }

    /// Reads the whole range from the device table without faulting (after MIGRATE_TO_DEV and
    /// EXCLUSIVE). ENOENT if some page has no entry.
    /// The driver reads into a bounce buffer and copies it out only when every page was there;
    /// checking first lets the copy go straight to the user buffer with the same outcome.
    func readBack(_ cmd: inout DmirrorCmd, _ buffer: DmirrorBuffer?) throws(Errno) {
        let size = Int(cmd.npages * pageSize)
        let end = cmd.addr + cmd.npages * pageSize
        let outcome = mutex.withLock { () -> Errno? in
            guard pt.allPresent(cmd.addr >> pageShift, end >> pageShift) else { return .ENOENT }
            guard let buffer, buffer.count >= size else { return .EFAULT } // copy_to_user
            _ = doRead(cmd.addr, end, into: buffer.bytes, base: cmd.addr)
            return nil
        }
        if let e = outcome { throw e }
        machine.stats.count(.bytesCopied, size)
        cmd.cpages = cmd.npages
    }

    /// `dmirror_check_atomic`: EPERM while any page of the range is still ATOMIC-tagged.
    func checkExclusive(_ cmd: DmirrorCmd) throws(Errno) {
        let first = cmd.addr >> pageShift, last = first + cmd.npages
        let atomic = mutex.withLock {
            pt.contains(tag: Dmirror.tagAtomic, in: first, last)
        }
        if atomic { throw .EPERM }
    }
}
