// PyTorch's CPU allocator with an exact-size cache for large blocks (see imageblocks/block_cache.py).
//
// Blocks of 1 MB and more are mapped directly (mmap, transparent huge pages asked for) and, when
// freed, kept for the next request of the same size: a training step asks for the same sizes in
// the same order every step, so from the second step on nothing is faulted in again and nothing
// fragments. The cache is bounded by 1.25x the largest working set seen: a request it cannot
// serve unmaps the longest-unused blocks first. Smaller blocks go to c10's own alloc_cpu / free_cpu.
// The C functions at the end are the whole interface (ctypes; no Python headers).

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <pthread.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kLarge = size_t{1} << 20;  // blocks from here on are cached
constexpr size_t kHuge = size_t{2} << 20;   // transparent huge page size and alignment
constexpr size_t kPage = 4096;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Stats {
  uint64_t in_use;     // bytes of large blocks held by tensors
  uint64_t cached;     // bytes of large blocks kept for reuse
  uint64_t peak;       // most bytes in use at once
  uint64_t hits;       // requests served from the cache
  uint64_t misses;     // requests that mapped a new block
  uint64_t evictions;  // cached blocks unmapped to stay within the bound
};

struct Free {
  void* ptr;
  size_t size;
};

class BlockCache {
 public:
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    void* ptr = nullptr;
    auto found = by_size_.find(size);
    if (found != by_size_.end() && !found->second.empty()) {
      auto it = found->second.back();
      found->second.pop_back();
      ptr = it->ptr;
      lru_.erase(it);
      stats_.cached -= size;
      ++stats_.hits;
    } else {
      // stay within 1.25x the largest working set seen (or this one, if larger), unmapping the
      // longest-unused blocks first: exact sizes need some room beyond the peak (a size freed just
      // before a bigger one is asked for), or a repeating step would evict what it needs next
      const size_t bound = std::max<size_t>(stats_.peak + stats_.peak / 4, stats_.in_use + size);
      while (!lru_.empty() && stats_.in_use + stats_.cached + size > bound) evict_oldest();
      ptr = map(size);
      if (ptr == nullptr) {  // out of address space or memory: give back every cached block, once
        while (!lru_.empty()) evict_oldest();
        ptr = map(size);
        if (ptr == nullptr) return nullptr;
      }
      ++stats_.misses;
    }
    live_[ptr] = size;
    stats_.in_use += size;
    if (stats_.in_use > stats_.peak) stats_.peak = stats_.in_use;
    return ptr;
  }

  // true when ptr was one of ours (now cached), false when it came from alloc_cpu
  bool give(void* ptr) {
    std::lock_guard<std::mutex> lock(mu_);
    auto found = live_.find(ptr);
    if (found == live_.end()) return false;
    const size_t size = found->second;
    live_.erase(found);
    stats_.in_use -= size;
    lru_.push_back(Free{ptr, size});
    by_size_[size].push_back(std::prev(lru_.end()));
    stats_.cached += size;
    return true;
  }

  void release() {
    std::lock_guard<std::mutex> lock(mu_);
    while (!lru_.empty()) evict_oldest();
    stats_.peak = stats_.in_use;
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  // fork: the child must not inherit a locked mutex; it gives the parent's cached blocks back so
  // they stay the parent's alone (copy-on-write would otherwise copy every page the parent reuses)
  void lock() { mu_.lock(); }
  void unlock() { mu_.unlock(); }
  void after_fork_in_child() {
    while (!lru_.empty()) evict_oldest();
    mu_.unlock();
  }

 private:
  static void* map(size_t size) {
    if (size < kHuge * 2) {
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      return p == MAP_FAILED ? nullptr : p;
    }
    // over-map by one huge page and trim both ends, so the block starts on a huge-page boundary
    const size_t span = size + kHuge;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = round_up(start, kHuge);
    if (aligned > start) munmap(raw, aligned - start);
    const uintptr_t end = aligned + size;
    if (start + span > end) munmap(reinterpret_cast<void*>(end), start + span - end);
    void* p = reinterpret_cast<void*>(aligned);
    madvise(p, size, MADV_HUGEPAGE);  // a hint: ignored where THP is off
    return p;
  }

  void evict_oldest() {
    const Free f = lru_.front();
    auto& same = by_size_[f.size];
    for (auto it = same.begin(); it != same.end(); ++it) {
      if (*it == lru_.begin()) {
        same.erase(it);
        break;
      }
    }
    lru_.pop_front();
    munmap(f.ptr, f.size);
    stats_.cached -= f.size;
    ++stats_.evictions;
  }

  std::mutex mu_;
  std::list<Free> lru_;  // cached blocks, longest unused first
  std::unordered_map<size_t, std::vector<std::list<Free>::iterator>> by_size_;
  std::unordered_map<void*, size_t> live_;
  Stats stats_{};
};

BlockCache& cache() {
  static BlockCache* instance = new BlockCache();  // never destroyed: tensors may outlive exit
  return *instance;
}

// the raw deleter, for both kinds; tensors' small blocks carry c10::free_cpu itself, so their
// frees skip the cache's lock and lookup
void delete_block(void* ptr) {
  if (ptr != nullptr && !cache().give(ptr)) c10::free_cpu(ptr);
}

class CachingCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (nbytes < kLarge) {
      void* ptr = c10::alloc_cpu(nbytes);
      return {ptr, ptr, &c10::free_cpu, cpu};
    }
    void* ptr = cache().take(round_up(nbytes, kPage));
    TORCH_CHECK(ptr != nullptr, "imageblocks block cache: could not map ", nbytes, " bytes");
    return {ptr, ptr, &delete_block, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &delete_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

CachingCPUAllocator* installed = nullptr;

}  // namespace

extern "C" {

// Make this the CPU allocator of every tensor allocated from now on; 1 once installed.
int imageblocks_block_cache_install() {
  if (installed != nullptr) return 1;
  installed = new CachingCPUAllocator();
  pthread_atfork([] { cache().lock(); }, [] { cache().unlock(); },
                 [] { cache().after_fork_in_child(); });
  c10::SetCPUAllocator(installed, /*priority=*/100);
  return c10::GetCPUAllocator() == installed ? 1 : 0;
}

// Unmap every cached block (the memory in use by tensors stays).
void imageblocks_block_cache_release() { cache().release(); }

void imageblocks_block_cache_stats(Stats* out) { *out = cache().stats(); }
}
